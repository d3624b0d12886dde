import re


def test_the_component_taken_apart_at_the_margin(capsys):
    """`bench.ingest_threads` runs every variant on a tiny phantom (each must ingest every slice pair of both
    phantoms, or the bench stops) and sets each against the bare read."""
    from bench import ingest_threads

    margins = ingest_threads.main(["--patients", "1", "--slices", "4", "--size", "128", "--image-size", "64",
                                   "--repeat", "1"])
    out = capsys.readouterr().out
    counts = {m["pairs"] for m in margins.values()}
    assert len(margins) == 6 and len(counts) == 1 and counts.pop()[1] > 8
    assert len(re.findall(r"x the bare read's CPU a pair", out)) == 5
    assert "component (Beam DirectRunner, in_memory)" in margins
