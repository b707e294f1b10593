"""popalign.data"""
