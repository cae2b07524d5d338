"""modelmake: the build, in packages that follow the pipeline.

core (standard library only) <- formats <- sources | fixtures | merge | gguf | checks | deploy <- build.
Feature packages import core and formats, never each other and never build; tests/test_layering.py
enforces it. Each feature package's stages.py says what its stages read and write (light imports:
dodo.py loads it on every call); its other modules build.
"""
