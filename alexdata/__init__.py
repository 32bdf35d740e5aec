"""The data stages, in dataflow order, and what they share.

synth.py      a generated mini-ImageNet in ImageNet's layouts; textures.py throughput data in prepare's format
sources.py    prepare's inputs: the four layouts, the three label formats, .tar.gz archives read in place
prepare.py    `alexnet prepare`: inputs -> resized JPEGs in shards (the job: plan, resize, write, resume)
jpegcheck.py  libjpeg's strict check: the damaged JPEGs that decode as grey without an error
shards.py     the shard format and manifest.json, written and read here only
verify.py     `alexnet verify`: shards against manifest.json; the first-use checks (shards, raw trees)
dataset.py    a split of a prepare output or a raw class-folder tree, as the readers take it; the image check
stats.py      `alexnet stats`: exact pixel sums over the training images -> the statistics
statsfile.py  stats.json and the mean image beside it, written and read here only
loader.py     the pipelines wrapped as an iterable of torch batches; echo.py data echoing's batches
bench.py      `alexnet bench prepare|stats|loader`
errors.py     the user-error root; host.py the machine (cores, device, progress lines); files.py atomic,
              link-safe writes
"""
