"""Built-in recipe modules. Each is a whole, readable module behind the small protocol in
launcher/config/modules.py; copy one to start your own."""
