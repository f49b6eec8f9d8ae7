"""HTTP front end: SGLang and OpenAI APIs over one engine process.

``launch.serve`` runs a server; ``http_server.create_app`` builds the FastAPI app
around a ``tokenizer_manager.TokenizerManager`` (injectable, so tests can put a
fake engine and tokenizer behind the real HTTP layer).
"""
