"""Text sources for recipes: local files, directories, Hugging Face datasets, packaged corpora."""
