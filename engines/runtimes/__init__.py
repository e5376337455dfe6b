"""Running the exported neural stages: one ``StageRuntime`` per stage on torch, onnxruntime or TensorRT.

``stage_spec`` describes a stage (tensors in and out, dynamic axes, TensorRT profiles), ``network_source``
says where its networks come from, ``stage_registry`` lists every family's stages (``engines.liveportrait.stages``,
``engines.joyvasa.stages``), ``manifest`` reads the ``ENGINES_DIR`` that ``avatar export`` writes, ``stage_runtime``
runs one stage and ``backend_choice`` turns ``--backend`` text into opened runtimes. The build side (ONNX export,
TensorRT engine builds, parity, benchmarks) lives in ``avatarstream.export`` and imports from here.
"""
