from hicl.cli import app

app(prog_name="hicl")
