import pytest
import torch

from dsi_bench import pipeline as pl
from dsi_bench.errors import ModelLoadError, OfflineError, SpecError
from dsi_bench.pipeline import SAMPLERS, PipelineSpec, load_pipeline, model_fingerprint
from dsi_bench.tokens import TokenBank


def test_defaults_reproduce_the_reference():
    spec = PipelineSpec()
    assert spec.model == "stabilityai/stable-diffusion-2"
    assert spec.sampler == "euler" and spec.preset.scheduler == "EulerDiscreteScheduler"
    assert spec.num_steps == 50 and spec.guidance_scale == 7.5
    assert spec.gen_size is None and spec.output_size == 512  # native (768 for SD2) -> 512
    assert spec.out_size == "auto" and spec.pixel_settings()["out_size"] == 512  # records the size, not "auto"
    assert spec.negative_prompt is None
    assert spec.device == "cpu" and spec.torch_dtype == torch.float32


def test_the_world_generator_keeps_its_native_size_unless_told():
    from dsi_bench.embedded import world_file

    world = PipelineSpec(model="world")
    assert world.model == str(world_file("generator")) and world.output_size is None
    assert PipelineSpec(model="world", out_size=64).output_size == 64


def test_dtype_follows_the_device():
    assert PipelineSpec(device="cuda").torch_dtype == torch.float16
    assert PipelineSpec(device="cuda", dtype="bf16").torch_dtype == torch.bfloat16
    assert PipelineSpec(dtype="torch.float32").dtype == "float32"


def test_sampler_presets():
    assert SAMPLERS["dpm++2m"].default_steps == 25
    assert PipelineSpec(sampler="dpm++2m").num_steps == 25
    assert PipelineSpec(sampler="dpm++2m", steps=10).num_steps == 10


@pytest.mark.parametrize("kwargs, message", [
    ({"sampler": "dpm++"}, "unknown sampler 'dpm\\+\\+'"),
    ({"steps": 0}, "steps=0"),
    ({"gen_size": 100}, "multiple of 8"),
    ({"batch_size": 0}, "batch_size=0"),
    ({"dtype": "int8"}, "dtype 'int8'"),
    ({"device": "gpu0"}, "device 'gpu0'"),
    ({"compile": "fast"}, "compile='fast'"),
])
def test_bad_spec_values(kwargs, message):
    with pytest.raises(SpecError, match=message):
        PipelineSpec(**kwargs)


def test_model_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="neither an existing folder nor a Hub id"):
        model_fingerprint(str(tmp_path / "missing" / "model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no model_index.json"):
        model_fingerprint(str(tmp_path / "empty"))
    with pytest.raises(OfflineError, match="hf download stabilityai/stable-diffusion-2 --local-dir"):
        model_fingerprint("stabilityai/stable-diffusion-2")
    with pytest.raises(OfflineError, match="--local-dir"):
        load_pipeline(PipelineSpec(model="some-org/some-model"))


def test_fingerprint_tracks_content(tiny_model, tmp_path):
    import shutil

    copy = shutil.copytree(tiny_model, tmp_path / "copy")
    assert model_fingerprint(str(copy)) == model_fingerprint(str(tiny_model))
    cfg = copy / "scheduler" / "scheduler_config.json"
    cfg.write_text(cfg.read_text().replace('"beta_end": 0.012', '"beta_end": 0.013'))
    assert model_fingerprint(str(copy)) != model_fingerprint(str(tiny_model))


def test_pipeline_loaded_once_per_process_and_weights_shared(tiny_spec, tiny_tokens, monkeypatch):
    from diffusers import StableDiffusionPipeline

    pl.clear_pipeline_cache()
    loads = []
    original = StableDiffusionPipeline.from_pretrained.__func__

    def counting(cls, *args, **kwargs):
        loads.append(args[0])
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(StableDiffusionPipeline, "from_pretrained", classmethod(counting))
    bank = TokenBank.load(tiny_tokens)
    a = load_pipeline(tiny_spec, bank)
    b = load_pipeline(tiny_spec.replace(steps=7, sampler="dpm++2m"), TokenBank.load(tiny_tokens))
    assert a is b  # sampler and steps are per-call settings
    assert len(loads) == 1
    other = TokenBank(bank.embeddings[:2] * 2, bank.class_infos[:2])
    c = load_pipeline(tiny_spec, other)
    assert c is not a and c.pipe.unet is a.pipe.unet  # another bank: own text encoder, shared UNet
    assert c.pipe.text_encoder is not a.pipe.text_encoder
    assert len(loads) == 1
    pl.clear_pipeline_cache()
    load_pipeline(tiny_spec, bank)
    assert len(loads) == 2  # cleared: loaded again


def test_scheduler_presets_keep_v_prediction(tiny_spec):
    loaded = load_pipeline(tiny_spec.replace(sampler="dpm++2m"))
    sched = loaded.make_scheduler()
    assert type(sched).__name__ == "DPMSolverMultistepScheduler"
    assert sched.config.prediction_type == "v_prediction"
    assert sched.config.algorithm_type == "dpmsolver++"


def test_sdpa_attention_is_used(tiny_spec):
    from diffusers.models.attention_processor import AttnProcessor2_0

    loaded = load_pipeline(tiny_spec)
    assert all(isinstance(p, AttnProcessor2_0) for p in loaded.pipe.unet.attn_processors.values())


def test_safety_checker_request_on_a_model_without_one(tiny_model):
    with pytest.raises(SpecError, match="ships no safety checker"):
        load_pipeline(PipelineSpec(model=str(tiny_model), safety_checker=True))


def test_broken_model_folder_is_a_clear_error(tiny_model, tmp_path):
    import shutil

    broken = shutil.copytree(tiny_model, tmp_path / "broken")
    (broken / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"truncated")
    with pytest.raises(ModelLoadError, match="could not load .* as a Stable Diffusion pipeline"):
        load_pipeline(PipelineSpec(model=str(broken)))


def test_a_missing_folder_shaped_like_a_hub_id_is_named_as_a_folder(tmp_path, monkeypatch):
    from dsi_bench.errors import ModelLoadError
    from dsi_bench.pipeline import check_model

    (tmp_path / "models").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError, match="model folder 'models/nope' does not exist"):
        check_model("models/nope")
    check_model("stabilityai/stable-diffusion-2")  # a Hub id whose org is no local folder stays a Hub id


def test_weights_loaded_under_inference_mode_can_still_be_trained_through(tiny_spec):
    """An evaluation that generates on the fly loads the pipeline inside torch.inference_mode(); token
    learning later shares the same UNet and must be able to backpropagate through it."""
    import torch

    from dsi_bench.pipeline import clear_pipeline_cache, load_components

    clear_pipeline_cache()
    with torch.inference_mode():
        load_pipeline(tiny_spec)
    parts = load_components(tiny_spec)
    assert not any(p.is_inference() for p in parts.unet.parameters())
    assert not any(p.is_inference() for p in parts.text_encoder.parameters())
    clear_pipeline_cache()
