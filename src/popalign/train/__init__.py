"""popalign.train"""
