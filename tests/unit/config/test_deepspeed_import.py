"""One truth per setting: a DeepSpeed config's values become the recipe's, conflicts are refused
naming both places, "auto" is resolved from the recipe, and what cannot run is refused before start."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from launcher.cli import main

RECIPE = "recipe: mlp_regression\nmodel: {hidden: 32}\n"


@pytest.fixture(autouse=True)
def schema_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LAUNCHER_CACHE_DIR", str(tmp_path / "cache"))


def _plan(tmp_path, recipe: str, config: dict | None = None, *overrides: str, nproc: int = 2):
    if config is not None:
        (tmp_path / "ds.json").write_text(json.dumps(config, indent=2))
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE + recipe)
    result = CliRunner().invoke(main, ["plan", str(path), "--nproc", str(nproc), "--json", *overrides])
    assert "Traceback" not in result.output
    if result.exit_code:
        return result.exit_code, result.output
    return 0, json.loads(result.output)


def _taken(plan: dict) -> dict:
    return {entry["key"]: entry["value"] for entry in plan.get("taken", [])}


DEEPSPEED = "backend: {name: deepspeed, deepspeed_config: ds.json}\n"


def test_a_json_file_is_read_as_json_and_its_settings_become_the_recipes(tmp_path):
    status, plan = _plan(tmp_path, DEEPSPEED, {"zero_optimization": {"stage": 3, "reduce_bucket_size": 2e8,
                                                                      "offload_optimizer": {"device": "cpu"}},
                                               "gradient_clipping": 0.5, "train_batch_size": 64})
    assert status == 0, plan
    backend = plan["recipe"]["backend"]
    assert (backend["zero_stage"], backend["offload_optimizer"]) == (3, True)  # what run.json and the tracker get
    assert plan["recipe"]["optimizer"]["grad_clip"] == 0.5 and plan["recipe"]["batch"]["global"] == 64
    assert backend["deepspeed_config"] == {"zero_optimization": {"reduce_bucket_size": 2e8}}  # the rest, as written
    sources = {entry["key"]: entry["source"] for entry in plan["taken"]}
    assert sources["backend.zero_stage"].endswith("ds.json:3 zero_optimization.stage")


def test_a_pasted_mapping_means_the_numbers_json_would_read(tmp_path):
    # YAML 1.1 reads 2e8 as text: the same config pasted into the recipe must mean the same numbers.
    status, plan = _plan(tmp_path, "backend: {name: deepspeed, deepspeed_config: {zero_optimization: "
                                   "{stage: 2, reduce_bucket_size: 2e8, allgather_bucket_size: 5e8}}}\n")
    assert status == 0, plan
    zero = plan["recipe"]["backend"]["deepspeed_config"]["zero_optimization"]
    assert zero == {"reduce_bucket_size": 2e8, "allgather_bucket_size": 5e8}
    (tmp_path / "ds.json").write_text('{"zero_optimization": {"stage": 2}}')
    status, plan = _plan(tmp_path, "backend: {name: deepspeed}\n", None, "backend.deepspeed_config=ds.json")
    assert status == 0 and _taken(plan)["backend.zero_stage"] == 2  # as an override too


def test_a_setting_given_twice_with_two_values_is_refused_naming_both_places(tmp_path):
    status, output = _plan(tmp_path, "backend: {name: deepspeed, zero_stage: 2, deepspeed_config: ds.json}\n",
                           {"zero_optimization": {"stage": 3}})
    assert status == 2
    assert "`backend.deepspeed_config.zero_optimization.stage`: 3" in output
    assert "ds.json:3 zero_optimization.stage) disagrees with `backend.zero_stage`: 2" in output
    assert "(" + str(tmp_path / "r.yaml") + ":3)" in output
    status, _ = _plan(tmp_path, "backend: {name: deepspeed, zero_stage: 3, deepspeed_config: ds.json}\n",
                      {"zero_optimization": {"stage": 3}})
    assert status == 0  # the same value twice is one truth


def test_a_config_without_a_stage_runs_deepspeeds_default_and_says_so(tmp_path):
    status, plan = _plan(tmp_path, DEEPSPEED, {"steps_per_print": 100})
    assert status == 0 and plan["recipe"]["backend"]["zero_stage"] == 0
    assert "DeepSpeed's default" in plan["taken"][0]["source"]


def test_an_adam_section_becomes_the_recipes_adamw_and_others_are_refused_with_the_equivalent(tmp_path):
    status, plan = _plan(tmp_path, DEEPSPEED, {"optimizer": {"type": "AdamW", "params": {
        "lr": 3e-5, "betas": [0.8, 0.999], "eps": 1e-8, "weight_decay": "auto"}}})
    assert status == 0, plan
    optimizer = plan["recipe"]["optimizer"]
    assert (optimizer["name"], optimizer["lr"], optimizer["betas"], optimizer["weight_decay"]) == \
        ("adamw", 3e-5, [0.8, 0.999], 0.0)  # "auto": the recipe's weight decay
    assert "optimizer" not in plan["recipe"]["backend"]["deepspeed_config"]
    status, output = _plan(tmp_path, DEEPSPEED, {"optimizer": {"type": "OneBitAdam", "params": {"lr": 1e-3}}})
    assert status == 2 and "`backend.deepspeed_config.optimizer.type`: DeepSpeed's OneBitAdam" in output
    assert "set optimizer.name, lr, betas, eps and weight_decay in the recipe" in output


def test_a_scheduler_section_runs_as_deepspeeds_with_its_autos_from_the_recipe(tmp_path):
    status, plan = _plan(tmp_path, "optimizer: {lr: 4e-4}\nscheduler: {warmup_steps: 7}\ntrain: {steps: 50}\n"
                         + DEEPSPEED, {"scheduler": {"type": "WarmupDecayLR", "params": {
                             "warmup_min_lr": "auto", "warmup_max_lr": "auto", "warmup_num_steps": "auto",
                             "total_num_steps": "auto"}}})
    assert status == 0, plan
    assert plan["recipe"]["scheduler"]["name"] == "deepspeed"
    assert plan["recipe"]["backend"]["deepspeed_config"]["scheduler"]["params"] == {
        "warmup_min_lr": 0, "warmup_max_lr": 4e-4, "warmup_num_steps": 7, "total_num_steps": 50}
    status, output = _plan(tmp_path, "scheduler: {name: cosine}\n" + DEEPSPEED,
                           {"scheduler": {"type": "WarmupLR", "params": {}}})
    assert status == 2 and "disagrees with `scheduler.name`" in output


def test_auto_is_resolved_from_the_recipe_or_refused_naming_the_key(tmp_path):
    config = {"gradient_clipping": "auto", "fp16": {"enabled": "auto"}, "train_batch_size": "auto",
              "zero_optimization": {"stage": 3, "reduce_bucket_size": "auto", "stage3_prefetch_bucket_size": "auto",
                                    "stage3_param_persistence_threshold": "auto"}}
    status, plan = _plan(tmp_path, "optimizer: {grad_clip: 0.25}\n" + DEEPSPEED, config)
    assert status == 0, plan
    zero = plan["recipe"]["backend"]["deepspeed_config"]["zero_optimization"]
    assert zero == {"reduce_bucket_size": 32 * 32, "stage3_prefetch_bucket_size": int(0.9 * 32 * 32),
                    "stage3_param_persistence_threshold": 320}  # from model.hidden 32
    assert plan["recipe"]["optimizer"]["grad_clip"] == 0.25
    status, output = _plan(tmp_path, DEEPSPEED, {"gradient_predivide_factor": "auto"})
    assert status == 2 and "`backend.deepspeed_config.gradient_predivide_factor`: \"auto\" has no value" in output


def test_fp16_is_refused_before_start_where_this_machines_ranks_have_no_gpu(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    status, output = _plan(tmp_path, DEEPSPEED, {"fp16": {"enabled": True}})
    assert status == 2 and "`precision`: fp16 needs a GPU" in output and "ds.json:3" in output
    status, plan = _plan(tmp_path, DEEPSPEED, {"bf16": {"enabled": True}})
    assert status == 0 and plan["recipe"]["precision"] == "bf16"


def test_deepspeeds_own_schema_names_every_error_with_its_key_and_line_in_plan(tmp_path):
    status, output = _plan(tmp_path, DEEPSPEED, {"zero_optimization": {"stage": 2, "overlap_com": True,
                                                                       "offload_param": {"pin_mem": 1}},
                                                 "bf16": {"enabled": True, "immediate_grad_update": "yes please" * 80}})
    assert status == 2 and "3 problems" in output
    assert "ds.json:4: `backend.deepspeed_config.zero_optimization.overlap_com`: Extra inputs are not permitted" \
        in output
    assert "`backend.deepspeed_config.zero_optimization.offload_param.pin_mem`" in output
    assert "`backend.deepspeed_config.bf16.immediate_grad_update`" in output
    assert "yes please" * 80 in output  # never cut short


def test_a_batch_the_plan_cannot_keep_is_refused_offering_the_recipe_values_that_keep_it(tmp_path):
    status, output = _plan(tmp_path, "batch: {global: 64, micro: 4}\n" + DEEPSPEED,
                           {"gradient_accumulation_steps": 2})
    assert status == 2
    assert "`backend.deepspeed_config.gradient_accumulation_steps`: 2 disagrees with the plan" in output
    assert "batch.global=16" in output  # micro 4 x 2 steps x 2 processes
    status, plan = _plan(tmp_path, "batch: {micro: 4}\n" + DEEPSPEED, {"gradient_accumulation_steps": 2})
    assert status == 0 and plan["recipe"]["batch"]["global"] == 16  # DeepSpeed's own arithmetic


def test_deepspeeds_monitors_become_the_trackers_and_its_csv_stays_in_the_run_directory(tmp_path):
    status, plan = _plan(tmp_path, DEEPSPEED, {"tensorboard": {"enabled": True, "output_path": "/elsewhere"},
                                               "csv_monitor": {"enabled": True, "output_path": "csv"}})
    assert status == 0, plan
    assert plan["recipe"]["tracking"]["backends"] == ["wandb", "tensorboard"]
    assert "tensorboard" not in plan["recipe"]["backend"]["deepspeed_config"]
    status, output = _plan(tmp_path, DEEPSPEED, {"csv_monitor": {"enabled": True, "output_path": "/tmp/out"}})
    assert status == 2 and "`backend.deepspeed_config.csv_monitor.output_path`: an absolute path" in output


def test_convert_prints_the_recipe_keys_and_refuses_what_cannot_run(tmp_path):
    config = tmp_path / "ds.json"
    config.write_text(json.dumps({"zero_optimization": {"stage": 1}, "optimizer": {"type": "Adam", "params": {
        "lr": 2e-4}}}))
    result = CliRunner().invoke(main, ["convert", str(config)])
    assert result.exit_code == 0 and "zero_stage: 1" in result.output and "lr: 0.0002" in result.output
    config.write_text(json.dumps({"optimizer": {"type": "Lamb"}}))
    result = CliRunner().invoke(main, ["convert", str(config)])
    assert result.exit_code == 2 and "DeepSpeed's Lamb has no equivalent here" in result.output
