"""The engine process: scheduler + model runner, driven over ZMQ by the front end."""
