"""The main job: `rtdenoise demo` for a few seconds with the shipped default model."""

from __future__ import annotations

import json

import pytest

from rtdenoise.cli import main


def test_demo_runs_and_reports_sanely(tmp_path, capsys):
    report_path, plot_path = tmp_path / "demo.json", tmp_path / "demo.png"
    rc = main(["demo", "--seconds", "3", "--rate", "50", "--json", str(report_path), "--plot", str(plot_path), "--quiet"])
    out = capsys.readouterr().out
    r = json.loads(report_path.read_text())
    assert rc == 0, out
    assert r["frames_in"] == 150 and r["frames_lost"] == 0 and r["frames_out"] == 150 - r["lag"]
    lat = r["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p999"] <= lat["max"] < 1000
    assert r["snr_db"]["denoised"] > r["snr_db"]["raw"] + 5  # the shipped model really denoises
    assert r["service"]["frames_in"] == 150 and r["service"]["gaps"] == 0
    assert plot_path.stat().st_size > 10_000
    assert "lost 0" in out and "SNR" in out


def test_imaging_demo_a_simulated_two_photon_rig_through_the_service(tmp_path, capsys):
    """`demo --modality imaging`: uint16 frames from a simulated rig, the shipped imaging model,
    the spectral report's keys plus the frame shape, and a figure (small frames: CI speed)."""
    report_path, plot_path = tmp_path / "demo.json", tmp_path / "demo.png"
    rc = main(["demo", "--modality", "imaging", "--size", "48", "--seconds", "3", "--json", str(report_path),
               "--plot", str(plot_path), "--quiet"])
    out = capsys.readouterr().out
    r = json.loads(report_path.read_text())
    assert rc == 0, out
    assert (r["modality"], r["shape"], r["dtype"], r["model"], r["rate_hz"]) == ("imaging", [48, 48], "<u2",
                                                                                   "imaging-lag0", 30.0)
    assert r["fs_hz"] == 30.0  # the rig records at the rate it sends (it drew 40.5 Hz at seed 0 and said so)
    assert r["frames_in"] == 90 and r["frames_lost"] == 0 and r["frames_out"] == 90
    assert r["snr_db"]["denoised"] > r["snr_db"]["raw"] + 3  # the shipped imaging model really denoises
    assert r["neuron_corr"]["denoised"] > r["neuron_corr"]["raw"]
    for key in ("frames_in", "frames_out", "frames_lost", "late_sends", "latency_ms", "latency_stages_ms_p50",
                "snr_db", "service", "rejected", "lag", "backend", "spin"):
        assert key in r, key
    assert plot_path.stat().st_size > 10_000
    assert "48×48 <u2" in out and "trace correlation" in out
    assert main(["demo", "--modality", "imaging", "--size", "8", "--quiet"]) == 2
    assert "--size" in capsys.readouterr().err


def test_bench_latency_measures_a_running_service_from_outside(tiny_checkpoint, capsys):
    from rtdenoise.stream import Service

    ck = tiny_checkpoint("subspace", lag=2)
    with Service(model=ck, sub="tcp://127.0.0.1:*", bind_sub=True, pub="tcp://127.0.0.1:*",
                 control="ipc://*", threads=1) as svc:
        # Twice on one service, the lag left to the outputs' headers: the second run inherits
        # nothing of the first (the frames the lag-2 model still owed its streams).
        for run in range(2):
            rc = main(["bench", "latency", "--pub", svc.addresses["sub"], "--connect", "--sub", svc.addresses["pub"],
                       "--rate", "100", "--seconds", "1", "--streams", "2", "--json"])
            r = json.loads(capsys.readouterr().out)
            assert rc == 0
            assert r["frames_in"] == 200 and r["frames_lost"] == 0 and r["frames_out"] == 200 - 2 * 2, (run, r)
            assert 0 < r["latency_ms"]["p50"] <= r["latency_ms"]["max"]
            assert set(r["latency_ms"]["stages_p50"]) == {"in", "service", "out"}
        status = svc.stats()["streams"]
    runs = [s for s in status if s.startswith("bench0.") and not s.endswith(".probe")]
    assert len(runs) == 2 and all(status[s]["frames_in"] == 100 and status[s]["gaps"] == 0 for s in runs)


def test_bench_latency_says_when_nothing_answers(capsys):
    rc = main(["bench", "latency", "--pub", "tcp://127.0.0.1:*", "--sub", "tcp://127.0.0.1:1", "--rate", "10",
               "--seconds", "1", "--timeout", "1"])
    assert rc == 2
    assert "no denoised probe frame came back" in capsys.readouterr().err


def test_bench_latency_with_a_bad_endpoint_is_a_clear_error(capsys):
    rc = main(["bench", "latency", "--pub", "tcp://not-an-address:x", "--sub", "tcp://127.0.0.1:1", "--seconds", "1",
               "--timeout", "1"])
    assert rc == 2
    assert "rtdenoise bench: error:" in capsys.readouterr().err


def test_service_refuses_a_header_limit_its_outputs_could_not_meet():
    from rtdenoise.stream import ServiceConfig, wire

    with pytest.raises(ValueError, match="max_header_bytes must be <="):
        ServiceConfig(max_header_bytes=wire.MAX_HEADER_BYTES).validate()


def test_paced_load_loops_a_short_recording_and_can_keep_only_latencies(tiny_checkpoint):
    """A long run from a short movie: frames beyond its end start it again with ``seq`` going
    on; with ``keep_outputs=False`` only latencies are kept and every frame is still counted."""
    import numpy as np

    from rtdenoise import denoise
    from rtdenoise.bench import paced_load
    from rtdenoise.stream import Service

    ck = tiny_checkpoint("spectral", lag=0)
    rec = np.random.default_rng(0).poisson(200, (7, 152)).astype(np.float32)
    with Service(model=ck, sub="tcp://127.0.0.1:*", bind_sub=True, pub="tcp://127.0.0.1:*", control="ipc://*") as svc:
        kept = paced_load(svc.addresses["sub"], svc.addresses["pub"], {"a": rec, "a5": rec[2:]}, rate=200, frames=20)
        bare = paced_load(svc.addresses["sub"], svc.addresses["pub"], {"b": rec}, rate=200, frames=20,
                          keep_outputs=False)
    assert kept.frames_in == 40 and kept.frames_out == 40 and kept.frames_lost == 0
    for name, r in (("a", rec), ("a5", rec[2:])):  # each stream loops its own recording
        looped = np.concatenate([r] * 4)[:20]
        np.testing.assert_allclose(kept.outputs[name], denoise(looped, model=ck), rtol=1e-5, atol=1e-3)
    assert bare.outputs["b"] is None and (bare.frames_in, bare.frames_out, bare.frames_lost) == (20, 20, 0)
    assert np.isfinite(bare.latency_summary()["p99"])
    with pytest.raises(ValueError, match="frames must be >= 1"):
        paced_load(svc.addresses["sub"], svc.addresses["pub"], {"a": rec}, rate=200, frames=0)
    with pytest.raises(ValueError, match=r"recording\(s\) \['e'\] hold no frames"):
        paced_load(svc.addresses["sub"], svc.addresses["pub"], {"a": rec, "e": rec[:0]}, rate=200)


def test_demo_with_a_model_the_service_refuses_is_a_clear_error(capsys):
    assert main(["demo", "--model", "nosuch", "--seconds", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rtdenoise demo: error: the service did not start: no shipped model named 'nosuch'"), err
