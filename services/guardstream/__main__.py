from guardstream.cli import app

app()
