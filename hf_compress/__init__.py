"""hf_compress"""
