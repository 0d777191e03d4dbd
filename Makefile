# Two commands do all set-up: `make test` and `make demo` (both create .venv if needed).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: test demo compare venv clean-venv

venv: $(STAMP)

$(STAMP): setup.py constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q 'pip<25'
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	$(PY) -m espnet_prune.offline $(VENV)/nltk_data >/dev/null
	touch $(STAMP)

# Two pytest workers (pytest-xdist), one test file each at a time, the slowest files first
# (tests/conftest.py): a 2-core machine busy to the end. TEST_JOBS=0 runs every test in the
# pytest process itself (the long recipe runs then start in the background at once).
TEST_JOBS ?= 2

test: $(STAMP)
	NLTK_DATA=$(CURDIR)/$(VENV)/nltk_data $(PY) -m pytest -q -n $(TEST_JOBS) --dist loadfile \
		--no-loadscope-reorder --durations=15 tests

# The whole recipe on the embedded mini corpus (CPU, about 20 minutes on 2 cores):
# baseline, equal-budget control, one pruned model (params 0.5).
demo: $(STAMP)
	cd egs2/librispeech_prune/asr1 && ./run.sh --dataset mini

# Does pruning beat training small? In its own work dir (exp/mini_compare; reuses demo's data):
# a teacher trained to convergence, targets 0.3 / 0.5 / 0.7, the equal-budget control, the
# same-size baselines (scratch models also to convergence), two more seeds of the pruned and
# scratch models at 0.5, and the out-of-distribution test sets. About 4 hours on an idle
# 2-core machine (6.6 CPU h of training, docs/results.md); every stage resumes where it stopped.
compare: $(STAMP)
	cd egs2/librispeech_prune/asr1 && ./run.sh --dataset mini --exp_dir exp/mini_compare \
		--train_config conf/mini/train_asr_conformer_converge.yaml \
		--prune_targets "0.3 0.5 0.7" --baselines "scratch magnitude layerdrop" \
		--seeds "1 2" --seed_targets 0.5 --mini_n_ood 400 --test_sets "test ood ood_noisy"

clean-venv:
	rm -rf $(VENV)
