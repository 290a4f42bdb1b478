"""hf_flowcredit"""
