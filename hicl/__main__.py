from hicl.cli import run

run(prog_name="hicl")
