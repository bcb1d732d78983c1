# Two commands for a newcomer (see README.md):
#   make demo   create .venv, install everything, run the engine on its built-in demo video
#   make test   same .venv, run the whole test suite (what CI runs)
#   make test-fast  the tier without MediaPipe tracking or training (-m "not slow"), on 2 worker
#                   processes (pytest-xdist), under a minute
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_OUT ?= out/demo
# Shared libraries that Blender-as-a-module (bpy) loads at run time on Debian/Ubuntu.
BPY_DEBS := libx11-6 libxrender1 libxxf86vm1 libxfixes3 libxi6 libxkbcommon0 libsm6 \
            libgl1 libegl1 libglx-mesa0 libegl-mesa0 libgl1-mesa-dri
# PortAudio, which sounddevice loads for `lipsync live --input mic` (docs/live.md)
AUDIO_DEBS := libportaudio2

.PHONY: demo test test-fast venv system-libs bench clean

venv: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@$(MAKE) --no-print-directory system-libs
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 (python3.11, python3.11-venv)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, with its own dependencies: nothing below may pull a newer one.
	$(BIN)/python -m pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps -r requirements.lock
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(BIN)/python -c "import mediapipe, torch, av, cv2, bpy; print('venv ready: mediapipe', mediapipe.__version__, 'torch', torch.__version__, 'bpy', bpy.app.version_string)"
	touch $(STAMP)

system-libs:
	@missing=""; for p in $(BPY_DEBS) $(AUDIO_DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if ! command -v apt-get >/dev/null; then echo "note: bpy and the microphone input need these system libraries:$$missing"; exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then echo "installing system libraries for bpy and PortAudio:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	else echo "note: Blender-as-a-module and lipsync live --input mic need:$$missing (run: sudo apt-get install$$missing)"; fi

demo: $(STAMP)
	$(BIN)/lipsync demo -o $(DEMO_OUT)
	# the Blender scene: the add-on (built and installed in a throw-away Blender user folder) predicts,
	# imports the textured head and drives a character; a .blend, a rendered PNG and an MP4 in $(DEMO_OUT)/blender
	$(BIN)/python tools/make_demo_blend.py --demo $(DEMO_OUT)

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not slow" -n 2 tests

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_prepare.py

clean:
	rm -rf $(VENV) out build dist *.egg-info
