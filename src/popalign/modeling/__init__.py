"""popalign.modeling"""
