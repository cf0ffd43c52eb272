from clawweb import create_app

app = create_app()
