.PHONY: setup demo test tdc

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/python -m chemtag demo

test: setup
	.venv/bin/python -m pytest -q

tdc: setup
	bash scripts/install_pytdc.sh
