import re


def test_stages_and_the_floor_against_the_bare_read(capsys):
    """`bench.ingest_stages` times every stage on both forms and the floor (resize, example and deflate against
    `bench.ingest`'s bare read) on a tiny phantom; the whole pair costs more than that floor's part of it."""
    from bench import ingest_stages

    ingest_stages.main(["--patients", "1", "--slices", "6", "--size", "128", "--image-size", "64", "--repeat", "1"])
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert {"folder", "floor", "zip"} <= set(lines)
    assert all(f"{stage} " in lines["folder"] for stage in ingest_stages.STAGES)
    floor = re.search(r"resize \+ example \+ deflate ([\d.]+)x the bare read, the whole pair ([\d.]+)x", lines["floor"])
    assert floor and 0 < float(floor[1]) < float(floor[2]), lines["floor"]
