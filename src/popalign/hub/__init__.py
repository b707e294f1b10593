"""Taking a trained model out: its model card and the upload to the Hugging Face Hub."""
