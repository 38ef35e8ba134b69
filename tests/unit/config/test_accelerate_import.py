"""An accelerate config file as recipe values: counts per node, not in all; what cannot run refused
with the reason; what only concerns accelerate's own start listed, never silently dropped."""

from __future__ import annotations

import json

from click.testing import CliRunner

from launcher.cli import main
from launcher.config.load import load_recipe


def _recipe(tmp_path, accelerate: str, extra: str = ""):
    (tmp_path / "accelerate.yaml").write_text(accelerate)
    path = tmp_path / "r.yaml"
    path.write_text(f"recipe: mlp_regression\nbackend: {{accelerate_config: accelerate.yaml}}\n{extra}")
    return path


def test_num_processes_is_the_total_over_machines_and_becomes_a_count_per_node(tmp_path):
    recipe = _recipe(tmp_path, "distributed_type: MULTI_GPU\nnum_machines: 2\nnum_processes: 8\n"
                               "main_process_ip: 10.0.0.1\nmain_process_port: 29500\nmachine_rank: 1\n")
    loaded = load_recipe(recipe)
    cluster = loaded.recipe.cluster
    assert (cluster.nodes, cluster.nproc_per_node, cluster.master_addr, cluster.master_port) == (2, 4, "10.0.0.1",
                                                                                                  29500)
    assert any("machine_rank" in line and "--node-rank" in line for line in loaded.not_mapped)
    result = CliRunner().invoke(main, ["plan", str(recipe), "--node-rank", "1", "--json", "batch.global=64"])
    assert result.exit_code == 0, result.output  # the machine's own part, with the rank it had in accelerate
    plan = json.loads(result.output)["plan"]
    assert plan["engine"] == "node" and plan["procs_by_node"] == [4, 4] and plan["node_rank"] == 1
    assert "--node-rank=1" in plan["nodes"][0]["argv"] and "--master-port=29500" in plan["nodes"][0]["argv"]
    uneven = CliRunner().invoke(main, ["plan", str(_recipe(tmp_path, "num_machines: 2\nnum_processes: 7\n"))])
    assert uneven.exit_code == 2 and "7 processes in all cannot be spread evenly over num_machines 2" in uneven.output


def test_what_would_change_the_run_is_refused_and_the_rest_is_listed_as_not_mapped(tmp_path):
    fsdp = ("distributed_type: FSDP\nmixed_precision: bf16\nnum_processes: 2\nfsdp_config:\n"
            "  fsdp_sharding_strategy: FULL_SHARD\n  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP\n"
            "  fsdp_activation_checkpointing: true\n  fsdp_state_dict_type: SHARDED_STATE_DICT\n")
    loaded = load_recipe(_recipe(tmp_path, fsdp))
    recipe = loaded.recipe
    assert (recipe.backend.name, recipe.backend.strategy, recipe.precision) == ("accelerate", "fsdp", "bf16")
    assert recipe.train.activation_checkpointing and recipe.backend.accelerate_config == ""  # consumed
    assert {line.split(":")[0] for line in loaded.not_mapped} == {"fsdp_config.fsdp_auto_wrap_policy",
                                                                  "fsdp_config.fsdp_state_dict_type"}
    refused = CliRunner().invoke(main, ["plan", str(_recipe(tmp_path, fsdp.replace("FULL_SHARD", "SHARD_GRAD_OP")
                                                           + "  fsdp_offload_params: true\n"))])
    assert refused.exit_code == 2 and "2 problems" in refused.output
    assert "`backend.accelerate_config.fsdp_config.fsdp_sharding_strategy`" in refused.output
    assert "`backend.accelerate_config.fsdp_config.fsdp_offload_params`" in refused.output


def test_a_value_the_recipe_gives_too_must_agree(tmp_path):
    result = CliRunner().invoke(main, ["plan", str(_recipe(tmp_path, "mixed_precision: fp16\n", "precision: bf16\n"))])
    assert result.exit_code == 2
    assert "'fp16' (" in result.output and "mixed_precision) disagrees with `precision`: 'bf16'" in result.output


def test_a_deepspeed_plugin_without_a_file_goes_through_the_deepspeed_table(tmp_path):
    recipe = _recipe(tmp_path, "distributed_type: DEEPSPEED\nnum_processes: 2\ndeepspeed_config:\n  zero_stage: 3\n"
                               "  offload_optimizer_device: cpu\n  gradient_clipping: 0.5\n  zero3_init_flag: true\n")
    loaded = load_recipe(recipe)
    backend = loaded.recipe.backend
    assert (backend.name, backend.zero_stage, backend.offload_optimizer) == ("deepspeed", 3, True)
    assert loaded.recipe.optimizer.grad_clip == 0.5
    assert any(line.startswith("deepspeed_config.zero3_init_flag") for line in loaded.not_mapped)


def test_convert_prints_an_accelerate_file_as_recipe_keys(tmp_path):
    (tmp_path / "accelerate.yaml").write_text("distributed_type: MULTI_GPU\nnum_machines: 2\nnum_processes: 4\n"
                                              "mixed_precision: 'no'\nrdzv_backend: static\n")
    result = CliRunner().invoke(main, ["convert", str(tmp_path / "accelerate.yaml")])
    assert result.exit_code == 0, result.output
    assert "nproc_per_node: 2" in result.output and "nodes: 2" in result.output and "precision: fp32" in result.output
    assert "# not mapped: rdzv_backend:" in result.output
    (tmp_path / "mpi.yaml").write_text("distributed_type: MULTI_CPU\nmpirun_config:\n  mpirun_hostfile: hosts\n")
    result = CliRunner().invoke(main, ["convert", str(tmp_path / "mpi.yaml")])
    assert result.exit_code == 2 and "`backend.accelerate_config.mpirun_config`: MPI" in result.output
