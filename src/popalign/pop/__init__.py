"""popalign.pop"""
