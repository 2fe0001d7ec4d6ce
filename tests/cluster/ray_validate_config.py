"""Configs from `stagekit cluster config` against Ray's own config code.

Usage: python ray_validate_config.py STAGEKIT_CLI SPEC

For the AWS and the fake multi-node provider: validate_config() on the file as
it is (what the autoscaler on a head made outside `ray up` runs when it reads
--autoscaling-config), prepare_config() + validate_config() (what `ray up` /
`ray down` run), the fields StandardAutoscaler.reset() reads, and the
invariants stagekit promises: every worker type offers vm:<instance type>, its
UserData registers exactly the type's resources, spot workers have a MaxPrice
string, the head has no GPU and max_workers 0.
"""
import copy
import json
import os
import re
import subprocess
import sys
import tempfile

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
import yaml  # noqa: E402
from ray.autoscaler._private.util import (  # noqa: E402
    hash_runtime_conf,
    prepare_config,
    validate_config,
)


def generate(cli, spec, *extra):
    out = subprocess.run([cli, "cluster", "config", spec, *extra], check=True,
                         capture_output=True, text=True).stdout
    return yaml.safe_load(out)


def check_common(cfg):
    validate_config(copy.deepcopy(cfg))
    # StandardAutoscaler.reset() reads these directly (KeyError otherwise).
    hash_runtime_conf(cfg["file_mounts"], cfg["cluster_synced_files"],
                      [cfg["worker_setup_commands"], cfg["worker_start_ray_commands"]])
    assert cfg["head_node_type"] == "ray.head.default"
    head = cfg["available_node_types"]["ray.head.default"]
    assert head["max_workers"] == 0 and head["resources"]["GPU"] == 0, head
    prov = cfg["provider"]
    assert prov["cache_stopped_nodes"] is False, prov
    assert prov["disable_launch_config_check"] is True, prov
    assert prov["disable_node_updaters"] is True, prov
    assert cfg["idle_timeout_minutes"] > 0
    assert any("--autoscaling-config=~/ray_bootstrap_config.yaml" in c
               for c in cfg["head_start_ray_commands"]), cfg["head_start_ray_commands"]
    workers = {k: v for k, v in cfg["available_node_types"].items() if k != "ray.head.default"}
    return workers


def main():
    cli, spec = sys.argv[1], sys.argv[2]
    aws = generate(cli, spec)
    workers = check_common(aws)
    gpu_types = [k for k, v in workers.items() if v["resources"].get("GPU", 0) >= 1]
    assert len(gpu_types) >= 2, f"the spec should have two GPU worker types: {workers}"
    for name, t in workers.items():
        nc = t["node_config"]
        vm = "vm:" + nc["InstanceType"]
        assert t["resources"].get(vm) == 1, (name, t["resources"])
        mo = nc["InstanceMarketOptions"]
        assert mo["MarketType"] == "spot", mo
        assert isinstance(mo["SpotOptions"]["MaxPrice"], str), mo
        float(mo["SpotOptions"]["MaxPrice"])
        # The AWS node provider pops SubnetIds (bootstrap never ran on this head).
        assert nc["SubnetIds"] and nc["ImageId"], nc
        ud = nc["UserData"]
        assert isinstance(ud, str) and ud.startswith("#!/bin/bash\n"), ud
        m = re.search(r"--resources='([^']*)'", ud)
        assert m, ud
        registered = json.loads(m.group(1))
        registered["CPU"] = int(re.search(r"--num-cpus=(\d+)", ud).group(1))
        registered["GPU"] = int(re.search(r"--num-gpus=(\d+)", ud).group(1))
        assert registered == t["resources"], (name, registered, t["resources"])
        assert "--gpus all --network host --shm-size=2g" in ud, ud
        assert re.search(r'--address="\$HEAD_IP:6379"', ud), ud
        assert "--block" in ud
    # What `ray up`/`ray down` do before using the config (no AWS calls).
    prepared = prepare_config(copy.deepcopy(aws))
    validate_config(prepared)
    assert prepared["available_node_types"].keys() == aws["available_node_types"].keys()

    fake = generate(cli, spec, "--provider", "fake-multinode", "--gcs-address", "127.0.0.1:6380")
    fworkers = check_common(fake)
    assert fake["provider"]["type"] == "fake_multinode"
    assert fake["provider"]["gcs_address"] == "127.0.0.1:6380"
    assert {k: v["resources"] for k, v in fworkers.items()} == \
        {k: v["resources"] for k, v in workers.items()}
    # The provider class Ray would load for it.
    from ray.autoscaler._private.providers import _get_node_provider_cls
    assert _get_node_provider_cls(fake["provider"]).__name__ == "FakeMultiNodeProvider"
    assert _get_node_provider_cls(aws["provider"]).__name__ == "AWSNodeProvider"

    # A broken config must fail the same check (the test can fail for real).
    broken = copy.deepcopy(aws)
    broken["available_node_types"][gpu_types[0]]["resources"]["GPU"] = 0.5
    try:
        validate_config(broken)
    except Exception:
        pass
    else:
        raise AssertionError("validate_config accepted a fractional resource")
    print(f"ok: {len(workers)} worker types ({', '.join(sorted(workers))}) pass Ray's validation")


if __name__ == "__main__":
    main()
