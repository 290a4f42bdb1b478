"""hf_dla"""
