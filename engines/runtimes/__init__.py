"""Running the neural stages: one ``StageRuntime`` per stage on torch, onnxruntime or TensorRT, and one batching
worker skeleton for the networks shared by many sessions.

``stage_spec`` describes a stage (tensors in and out, dynamic axes, TensorRT profiles), ``network_source``
says where its networks come from, ``stage_registry`` lists every family's stages (``engines.liveportrait.stages``,
``engines.joyvasa.stages``), ``manifest`` reads the ``ENGINES_DIR`` that ``avatar export`` writes, ``stage_runtime``
runs one stage and ``backend_choice`` turns ``--backend`` text into opened runtimes; ``batching_worker`` is the
skeleton of the workers that run one network for many sessions in shared batches (bounded queue, fairness, deadline,
cancel, close; ``engines.liveportrait.render_worker``, ``engines.joyvasa.motion_worker``). The build side (ONNX
export, TensorRT engine builds, parity) lives in ``avatarstream.export`` and imports from here; its benchmark is in
``avatarstream.bench``.
"""
