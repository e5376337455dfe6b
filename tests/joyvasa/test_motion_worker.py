"""The shared motion worker: denoises several sessions' windows in one DiT call per step, never mixes them."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from avatarstream.engines.base import EngineError
from avatarstream.engines.joyvasa.checkpoint import SMALL_CONFIG, small_motion_generator
from avatarstream.engines.joyvasa.motion_worker import (ACTIVE_SESSION_S, MotionQueueFull, MotionWindow, MotionWorker,
                                                        step_noise)
from avatarstream.engines.joyvasa.offline import initial_noise, sample_window
from avatarstream.engines.joyvasa.streaming import StreamingConfig, StreamingMotionGenerator

# Batched and single-window DiT calls round differently in the last float bits (the matrix products are blocked
# by batch size); over the reverse chain that stays below this (measured ~1e-6 on the miniature, see docs/joyvasa.md).
TOLERANCE = 1e-5
STEPS_MODEL = SMALL_CONFIG.with_(n_diff_steps=12)  # enough steps for windows to overlap at different steps


@pytest.fixture(scope="module")
def model():
    return small_motion_generator(seed=1, config=STEPS_MODEL)


def make_window(model, seed: int, length: int = 12, cfg_scale: float = 2.0) -> tuple[MotionWindow, torch.Tensor]:
    """A window of random inputs and ``sample_window``'s result for it (the unbatched reference)."""
    g = torch.Generator().manual_seed(seed)
    cfg = model.cfg
    audio = torch.randn(1, length, cfg.feature_dim, generator=g)
    prev_m = torch.randn(1, cfg.n_prev_motions, cfg.motion_feat_dim, generator=g)
    prev_a = torch.randn(1, cfg.n_prev_motions, cfg.feature_dim, generator=g)
    x_T = initial_noise(model, length, g)
    state = g.get_state()
    ref = sample_window(model, audio, prev_m, prev_a, x_T, cfg_scale=cfg_scale, generator=g)
    after_ref = g.get_state()
    g.set_state(state)
    noise = step_noise(tuple(x_T.shape), model.schedule().num_steps, g)
    assert torch.equal(g.get_state(), after_ref)  # the same draws as sample(), in the same order
    return MotionWindow(audio, prev_m, prev_a, x_T, noise, cfg_scale), ref


class Gate:
    """A forward pre-hook on the denoiser that holds the worker inside its next call until released."""

    def __init__(self, model) -> None:
        self.entered, self.release = threading.Event(), threading.Event()
        self.handle = model.denoising_net.register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        if not self.release.is_set():
            self.entered.set()
            assert self.release.wait(30)

    def open(self) -> None:
        self.release.set()
        self.handle.remove()


def test_one_window_equals_sample_window(model):
    window, ref = make_window(model, seed=3)
    worker = MotionWorker(model, max_wait_ms=0)
    try:
        out = worker.sample("s", window)
    finally:
        worker.close()
    assert torch.equal(out, ref)  # alone in its calls, a window runs exactly sample_window's arithmetic
    assert worker.stats.windows == 1 and worker.stats.calls == model.schedule().num_steps


def test_sessions_share_calls_and_get_their_own_windows(model):
    sessions = 4
    cases = [make_window(model, seed=10 + k, cfg_scale=1.5 + k / 2) for k in range(sessions)]
    worker = MotionWorker(model, max_batch=8, max_wait_ms=500)
    results: dict[int, torch.Tensor] = {}
    start = threading.Barrier(sessions)

    def session(k: int) -> None:
        start.wait()
        results[k] = worker.sample(k, cases[k][0])

    threads = [threading.Thread(target=session, args=(k,)) for k in range(sessions)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        worker.close()
    errors = [float((results[k] - cases[k][1]).abs().max()) for k in range(sessions)]
    assert max(errors) <= TOLERANCE, errors
    assert worker.stats.multi_session_calls >= 1 and worker.stats.max_windows_per_call >= 2
    # the windows of different sessions are different: a mix-up could not pass the check above
    assert min(float((results[0] - results[k]).abs().max()) for k in range(1, sessions)) > 1e-2


def test_a_late_window_joins_calls_in_flight_at_its_own_step(model):
    (first, ref_first), (late, ref_late) = make_window(model, seed=20), make_window(model, seed=21)
    worker = MotionWorker(model, max_batch=4, max_wait_ms=0)
    gate = Gate(model)
    try:
        f1 = worker.submit("a", first)
        assert gate.entered.wait(30)  # the first window is in its first step
        f2 = worker.submit("b", late)
        gate.open()
        out1, out2 = f1.result(60), f2.result(60)
    finally:
        gate.open()
        worker.close()
    assert worker.stats.mixed_step_calls >= 1  # continuous batching: steps T-1 and T in one call
    assert float((out1 - ref_first).abs().max()) <= TOLERANCE
    assert float((out2 - ref_late).abs().max()) <= TOLERANCE


def test_the_idle_worker_waits_for_active_sessions_only(model):
    """On a clock that stands still the idle deadline never comes, so a worker that waited for company would
    hang: a window alone returns only because nobody else is active, and a window of two active sessions
    runs only once the other's has come (each step shared)."""
    (wa, ref_a), (wb, ref_b) = make_window(model, seed=25), make_window(model, seed=26)
    steps = model.schedule().num_steps
    now = [1000.0]
    worker = MotionWorker(model, max_batch=4, max_wait_ms=5000, clock=lambda: now[0])
    try:
        worker.sample("a", wa, timeout=60)  # the only active session: no wait (the timeout only ends a hang)
        assert worker.stats.windows_per_call == {1: steps}
        first = worker.submit("a", wa), worker.submit("b", wb)  # b is active now too
        assert all(f.result(60) is not None for f in first)
        calls, shared = worker.stats.calls, worker.stats.windows_per_call.get(2, 0)
        fa = worker.submit("a", wa)  # waits for b's window, however long b takes ...
        time.sleep(0.05)  # ... (a worker that did not wait would start a's window alone meanwhile)
        fb = worker.submit("b", wb)
        out_a, out_b = fa.result(60), fb.result(60)
        assert worker.stats.windows_per_call.get(2) == shared + steps  # a's window waited for b's: every step shared
        assert worker.stats.calls == calls + steps
        now[0] += ACTIVE_SESSION_S + 0.001  # b silent past the activity window: a is alone again, no wait
        alone = worker.stats.windows_per_call[1]
        worker.sample("a", wa, timeout=60)
        assert worker.stats.windows_per_call[1] == alone + steps
    finally:
        worker.close()
    assert float((out_a - ref_a).abs().max()) <= TOLERANCE and float((out_b - ref_b).abs().max()) <= TOLERANCE


def test_streams_through_the_worker_match_streams_alone(model, speech_audio):
    """Several streams in threads, sharing one worker, produce the motion each produces on its own."""
    cfg = StreamingConfig(chunk_frames=5, lookahead_ms=80)
    clips = [speech_audio[k * 8000: k * 8000 + 24000] for k in range(3)]

    def run(gen: StreamingMotionGenerator, clip: np.ndarray) -> np.ndarray:
        frames = []
        for i in range(0, clip.size, 640):
            gen.push_audio(clip[i:i + 640])
            frames += gen.pull_motion()
        frames += gen.flush()
        return np.stack([f.vector() for f in frames])

    alone = [run(StreamingMotionGenerator(model, config=StreamingConfig(**{**cfg.__dict__, "seed": k})), clip)
             for k, clip in enumerate(clips)]
    worker = MotionWorker(model, max_batch=8, max_wait_ms=20)
    shared: dict[int, np.ndarray] = {}
    start = threading.Barrier(len(clips))

    def session(k: int) -> None:
        gen = StreamingMotionGenerator(model, config=StreamingConfig(**{**cfg.__dict__, "seed": k}), worker=worker)
        start.wait()
        shared[k] = run(gen, clips[k])

    threads = [threading.Thread(target=session, args=(k,)) for k in range(len(clips))]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        worker.close()
    for k in range(len(clips)):
        assert shared[k].shape == alone[k].shape
        # de-normalised motion (angles in degrees): the normalised windows differ by < TOLERANCE
        np.testing.assert_allclose(shared[k], alone[k], rtol=1e-4, atol=1e-4)
    assert worker.stats.multi_session_calls >= 1


def test_a_backlogged_session_does_not_starve_a_newcomer(model):
    windows = [make_window(model, seed=30 + k)[0] for k in range(6)]
    newcomer, ref = make_window(model, seed=40)
    worker = MotionWorker(model, max_batch=2, max_wait_ms=0)
    gate = Gate(model)
    done: list[str] = []
    lock = threading.Lock()

    def mark(name: str):
        def cb(_):
            with lock:
                done.append(name)
        return cb

    try:
        futures = [worker.submit("hog", windows[0])]
        assert gate.entered.wait(30)
        futures += [worker.submit("hog", w) for w in windows[1:]]
        for k, f in enumerate(futures):
            f.add_done_callback(mark(f"hog{k}"))
        late = worker.submit("late", newcomer)
        late.add_done_callback(mark("late"))
        gate.open()
        out = late.result(60)
        for f in futures:
            f.result(60)
    finally:
        gate.open()
        worker.close()
    # round-robin order alone would give the free slot to the hog's second window; the newcomer has none in flight
    assert done.index("late") <= 1, done
    assert float((out - ref).abs().max()) <= TOLERANCE


def test_full_queue_raises_a_clear_error(model):
    windows = [make_window(model, seed=50 + k)[0] for k in range(4)]
    worker = MotionWorker(model, max_batch=1, max_wait_ms=0, max_pending=2)
    gate = Gate(model)
    try:
        first = worker.submit("a", windows[0])
        assert gate.entered.wait(30)  # in flight: the queue is empty again
        queued = [worker.submit("a", windows[1]), worker.submit("b", windows[2])]
        with pytest.raises(MotionQueueFull, match="motion queue stayed full"):
            worker.submit("c", windows[3], timeout=0.1)
        gate.open()
        for f in [first, *queued]:
            assert f.result(60).shape == (1, 12, 70)
    finally:
        gate.open()
        worker.close()


def test_cancel_drops_a_leaving_session_and_others_are_unaffected(model):
    (w_a, _), (w_a2, _), (w_b, ref_b) = (make_window(model, seed=s) for s in (60, 61, 62))
    worker = MotionWorker(model, max_batch=4, max_wait_ms=0)
    gate = Gate(model)
    try:
        fa = worker.submit("a", w_a)
        assert gate.entered.wait(30)
        fa2, fb = worker.submit("a", w_a2), worker.submit("b", w_b)
        assert worker.cancel("a") == 2  # one queued, one in flight (mid-call)
        gate.open()
        out_b = fb.result(60)
        assert fa.cancelled() and fa2.cancelled()
        assert float((out_b - ref_b).abs().max()) <= TOLERANCE
        assert worker.sample("a", w_a).shape == (1, 12, 70)  # the worker goes on serving
        assert worker.alive
    finally:
        gate.open()
        worker.close()


def test_a_failing_call_fails_its_windows_and_the_worker_goes_on(model):
    (doomed, _), (good, ref) = make_window(model, seed=70), make_window(model, seed=71)
    worker = MotionWorker(model, max_wait_ms=0)

    def fail_once(module, args):
        handle.remove()
        raise RuntimeError("device lost")

    handle = model.denoising_net.register_forward_pre_hook(fail_once)
    try:
        with pytest.raises(RuntimeError, match="device lost"):
            worker.sample("a", doomed)
        assert float((worker.sample("b", good) - ref).abs().max()) <= TOLERANCE
        assert worker.alive
    finally:
        handle.remove()
        worker.close()


def test_close_fails_queued_work_and_refuses_more(model):
    windows = [make_window(model, seed=80 + k)[0] for k in range(2)]
    worker = MotionWorker(model, max_batch=1, max_wait_ms=0)
    gate = Gate(model)
    try:
        first = worker.submit("a", windows[0])
        assert gate.entered.wait(30)
        queued = worker.submit("b", windows[1])
        closer = threading.Thread(target=worker.close)
        closer.start()
        gate.open()
        closer.join(30)
    finally:
        gate.open()
        worker.close()
    assert not worker.alive
    with pytest.raises(EngineError, match="closed"):
        queued.result(5)
    assert first.done()
    with pytest.raises(EngineError, match="closed"):
        worker.submit("c", windows[0])


def test_wrong_noise_shape_and_bad_settings_are_refused(model):
    window, _ = make_window(model, seed=90)
    with pytest.raises(EngineError, match="max_batch"):
        MotionWorker(model, max_batch=0)
    worker = MotionWorker(model)
    try:
        bad = MotionWindow(window.audio, window.prev_motion, window.prev_audio, window.x_T, window.noise[1:], 2.0)
        with pytest.raises(EngineError, match="step noise"):
            worker.submit("a", bad)
        with pytest.raises(EngineError, match="own model"):
            StreamingMotionGenerator(small_motion_generator(seed=2), worker=worker)
    finally:
        worker.close()


@pytest.fixture(scope="module")
def small_engine(tmp_path_factory):
    """The joyvasa engine on the official layout with the miniature networks (as tests/test_engine_contract.py)."""
    import argparse

    from avatarstream.engines.joyvasa.avatar_engine import (AUDIO_CONFIG_DIR, MOTION_GENERATOR_FILE,
                                                            MOTION_TEMPLATE_FILE, JoyVasaEngine)
    from avatarstream.engines.joyvasa.checkpoint import ARG_NAMES, small_audio_config
    from avatarstream.engines.joyvasa.motion import MotionTemplate
    from avatarstream.engines.liveportrait.checkpoint import write_random_checkpoints
    from avatarstream.engines.liveportrait.config import LivePortraitConfig

    root = tmp_path_factory.mktemp("joyvasa_small")
    write_random_checkpoints(root, seed=5, variants=("human",), config=LivePortraitConfig.small())
    (root / MOTION_GENERATOR_FILE).parent.mkdir(parents=True)
    args = argparse.Namespace(**{k: getattr(SMALL_CONFIG, k) for k in ARG_NAMES})
    torch.save({"args": args, "model": small_motion_generator(seed=0).state_dict(), "iter": 0}, root / MOTION_GENERATOR_FILE)
    small_audio_config(SMALL_CONFIG.audio_model).save_pretrained(str(root / AUDIO_CONFIG_DIR))
    (root / MOTION_TEMPLATE_FILE).parent.mkdir(parents=True)
    MotionTemplate.synthetic().save(root / MOTION_TEMPLATE_FILE)
    engine = JoyVasaEngine(weights=root, device="cpu", chunk_frames=3, lookahead_ms=40, motion_max_wait_ms=100,
                           liveportrait_config=LivePortraitConfig.small())
    yield engine
    engine.close()


def test_an_engines_streams_share_one_motion_worker(small_engine, human_portrait, speech_audio):
    from avatarstream.engines.portraits import load_portrait

    portrait = load_portrait(human_portrait)
    streams = [small_engine.open_stream(portrait, size=256) for _ in range(3)]
    worker = small_engine.motion_worker()
    assert all(s.generator.worker is worker for s in streams)
    before = worker.stats.multi_session_calls
    frames: dict[int, int] = {}
    start = threading.Barrier(len(streams))

    def session(k: int) -> None:
        start.wait()
        n = 0
        for i in range(0, 9 * 640, 640):
            n += len(streams[k].feed(speech_audio[8000 + i: 8640 + i]))
        frames[k] = n + len(streams[k].flush())

    threads = [threading.Thread(target=session, args=(k,)) for k in range(len(streams))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert frames == {0: 9, 1: 9, 2: 9}
    assert worker.stats.multi_session_calls > before  # the streams' windows shared DiT calls
    for s in streams:
        s.close()
    assert worker.alive


def test_engine_options_for_the_motion_worker_are_checked():
    from avatarstream.engines.joyvasa.options import MOTION_MAX_BATCH, JoyVasaOptions

    assert JoyVasaOptions().motion_max_batch == MOTION_MAX_BATCH
    with pytest.raises(EngineError, match="motion_max_batch"):
        JoyVasaOptions(motion_max_batch=0)
    with pytest.raises(EngineError, match="motion_max_wait_ms"):
        JoyVasaOptions(motion_max_wait_ms=-1)
