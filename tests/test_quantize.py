"""Deep Compression's later stages (issue 13, item 3): k-means weight sharing with centroid fine-tuning,
the encoded file (codebook, codes, relative indices, canonical Huffman) that loads back to exactly the
quantised model, one-line errors for damaged files, and the byte metrics of `ssmoe train quantize=kmeans`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import safe_open, save_file

from ssmoe_cli.errors import SsmoeError
from ssmoe_cli.export import export_model, load_model, read_export
from ssmoe_cli.models.fcl import FCL
from ssmoe_cli.models.layers import masked_layers
from ssmoe_cli.quantize import KMeansQuantization, codec, finetune_centroids, huffman, kmeans_1d, share_weights

pytestmark = pytest.mark.usefixtures("one_thread")

FCL_CFG = {"_target_": "ssmoe_cli.models.fcl.FCL", "in_features": 64, "num_classes": 10, "hidden": [40, 20]}


def pruned_fcl(sparsity: float = 0.8) -> FCL:
    torch.manual_seed(0)
    model = FCL(64, 10, hidden=[40, 20])
    gen = torch.Generator().manual_seed(1)
    for layer in masked_layers(model):
        layer.set_mask(torch.rand(layer.weight.shape, generator=gen) >= sparsity)
    return model


def batches(n: int = 4, d: int = 64, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(32, d, generator=gen), torch.randint(0, 10, (32,), generator=gen)) for _ in range(n)]


# -- k-means -----------------------------------------------------------------------------------------


def test_kmeans_finds_the_means_of_hand_made_groups():
    values = torch.tensor([-1.0, -1.2, -0.8, 0.1, -0.1, 0.95, 1.05, 2.2, 1.8, 2.0])
    codebook, codes = kmeans_1d(values, 4)
    assert codebook.dtype == torch.float32
    assert torch.allclose(codebook, torch.tensor([-1.0, 0.0, 1.0, 2.0]), atol=1e-6)
    assert codes.tolist() == [0, 0, 0, 1, 1, 2, 2, 3, 3, 3]


def test_linear_initialisation_keeps_a_centroid_on_a_rare_large_weight():
    """Han et al.: linear init over [min, max] (not density-based) keeps the few large weights exact;
    an interval with no value keeps its initial centroid, unused."""
    values = torch.cat([torch.linspace(-0.1, 0.1, 99), torch.tensor([3.0])])
    codebook, codes = kmeans_1d(values, 4)
    assert codebook[3] == 3.0 and codes[-1] == 3 and (codes[:-1] == 0).all()
    assert torch.allclose(codebook[1:3], torch.tensor([-0.1 + 3.1 / 3, -0.1 + 6.2 / 3]))  # linspace(-0.1, 3, 4)


def test_sharing_keeps_masks_and_uses_at_most_2_to_the_bits_values_per_layer():
    model = pruned_fcl()
    masks = [layer.mask.clone() for layer in masked_layers(model)]
    shared = share_weights(dict(model.prunable_layers()), bits=3, index_bits=5)
    assert set(shared) == {"net.0", "net.2", "net.4"}
    for layer, mask in zip(masked_layers(model), masks, strict=True):
        assert torch.equal(layer.mask, mask)
        assert len(torch.unique(layer.weight[layer.mask])) <= 8 and (layer.weight[~mask] == 0).all()


def test_centroid_fine_tuning_moves_each_centroid_by_the_summed_gradient_of_its_weights():
    model = pruned_fcl()
    layers = dict(model.prunable_layers())
    shared = share_weights(layers, bits=2, index_bits=5)
    before = {name: s.codebook.clone() for name, s in shared.items()}
    ((x, y),) = batches(1)
    # The expected first Adam step: -lr * sign(sum of the weight gradients per cluster).
    model.zero_grad()
    torch.nn.functional.cross_entropy(model(x).logits, y).backward()
    expected = {}
    for name, s in shared.items():
        summed = torch.zeros(4).index_add_(0, s.codes, layers[name].weight.grad.reshape(-1)[s.positions])
        expected[name] = before[name] - 0.01 * torch.sign(summed)
    steps = finetune_centroids(model, layers, shared, lambda: [(x, y)], epochs=1, lr=0.01)
    assert steps == 1
    for name, s in shared.items():
        assert torch.allclose(s.codebook, expected[name], atol=1e-6)
        weight = layers[name].weight.detach().reshape(-1)
        assert torch.equal(weight[s.positions], s.codebook[s.codes])  # the layer holds the tuned centroids


def test_bad_settings_are_one_clear_error():
    with pytest.raises(ValueError, match=r"quantize.bits=9: must be an integer in \[1, 8\]"):
        KMeansQuantization(bits=9)
    with pytest.raises(ValueError, match="quantize.entropy='zip'"):
        KMeansQuantization(entropy="zip")
    with pytest.raises(ValueError, match="quantize.lr=0"):
        KMeansQuantization(lr=0)


# -- the codec ---------------------------------------------------------------------------------------


def test_relative_indices_use_fillers_for_long_gaps():
    # index_bits=3: symbol 7 is a filler that skips 7 positions; a gap of 36 = 5 x 7 + 1.
    symbols = codec.relative_indices(np.array([0, 3, 40]), index_bits=3)
    assert symbols.tolist() == [0, 2, 7, 7, 7, 7, 7, 1]
    assert codec.positions_of(symbols, 3).tolist() == [0, 3, 40]
    positions = np.sort(np.random.default_rng(0).choice(100_000, 3_000, replace=False))
    for bits in (1, 4, 5, 8):
        assert np.array_equal(codec.positions_of(codec.relative_indices(positions, bits), bits), positions)


def test_huffman_round_trips_and_is_within_a_few_percent_of_the_entropy_bound():
    rng = np.random.default_rng(0)
    p = 0.8 ** np.arange(32)
    symbols = rng.choice(32, size=20_000, p=p / p.sum())
    lengths = huffman.code_lengths(np.bincount(symbols, minlength=32))
    payload = huffman.encode(symbols, lengths)
    assert np.array_equal(huffman.decode(payload, lengths, len(symbols)), symbols)
    bound = huffman.entropy_bits(symbols, 32) / 8
    table = len(lengths)  # one byte per symbol, stored beside the payload
    assert bound <= len(payload) <= 1.03 * bound + table
    assert len(payload) < 0.75 * len(codec.pack(symbols, 5))  # fixed width: 5 bits a symbol


def test_huffman_limits_code_lengths_and_decodes_one_symbol_alphabets():
    fibonacci = [1, 1]
    while len(fibonacci) < 30:
        fibonacci.append(fibonacci[-1] + fibonacci[-2])
    symbols = np.repeat(np.arange(30), fibonacci)
    lengths = huffman.code_lengths(np.bincount(symbols))
    assert lengths.max() <= huffman.MAX_LENGTH
    assert np.array_equal(huffman.decode(huffman.encode(symbols, lengths), lengths, len(symbols)), symbols)
    one = np.zeros(10, dtype=np.int64)
    lengths = huffman.code_lengths(np.bincount(one, minlength=4))
    assert lengths.tolist() == [1, 0, 0, 0]
    assert np.array_equal(huffman.decode(huffman.encode(one, lengths), lengths, 10), one)


# -- the file ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("entropy", ["huffman", "none"])
def test_the_file_loads_to_exactly_the_quantised_model(tmp_path, entropy):
    model = pruned_fcl()
    quantized = KMeansQuantization(bits=5, finetune_epochs=1, entropy=entropy).apply(model, batches)
    model.eval()
    info = export_model(model, FCL_CFG, tmp_path / "q.safetensors", quantized=quantized)
    assert info.quantized_layers == 3 and info.csr_tensors == 0
    exported = read_export(tmp_path / "q.safetensors")
    assert set(exported.quantized) == {"net.0.weight", "net.2.weight", "net.4.weight"}
    assert exported.quantized["net.0.weight"]["entropy"] == entropy
    x = torch.randn(100, 64)
    for kernels in (False, True):
        loaded = load_model(tmp_path / "q.safetensors", sparse_kernels=kernels)
        assert torch.allclose(loaded(x).logits, model(x).logits, atol=1e-5)
    loaded = load_model(tmp_path / "q.safetensors", sparse_kernels=False)
    assert torch.equal(loaded(x).logits, model(x).logits)
    for mine, theirs in zip(masked_layers(model), masked_layers(loaded), strict=True):
        assert torch.equal(mine.weight, theirs.weight) and torch.equal(mine.mask, theirs.mask)


def test_a_file_without_shared_layers_stays_format_1(tmp_path):
    export_model(pruned_fcl(), FCL_CFG, tmp_path / "plain.safetensors")
    with safe_open(str(tmp_path / "plain.safetensors"), framework="pt") as fh:
        assert fh.metadata()["format"] == "ssmoe-sparse/1" and "quantized" not in fh.metadata()


def test_a_model_changed_after_quantisation_is_not_exported_as_shared(tmp_path):
    model = pruned_fcl()
    quantized = KMeansQuantization(bits=4, finetune_epochs=0).apply(model, batches)
    with torch.no_grad():
        model.net[0].weight.add_(model.net[0].mask * 1e-3)
    with pytest.raises(ValueError, match="changed after quantisation"):
        export_model(model, FCL_CFG, tmp_path / "q.safetensors", quantized=quantized)


KEY = "net.0.weight"


def _rewrite(src, dst, edit) -> None:
    """Copy an exported file, letting `edit(parts, meta, tensors)` change net.0's encoded parts (name ->
    uint8 array, re-joined with their new sizes), its metadata, or the tensors."""
    with safe_open(str(src), framework="pt") as fh:
        metadata = dict(fh.metadata())
        tensors = {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118 (safe_open is no dict)
    quantized = json.loads(metadata["quantized"])
    meta = quantized[KEY]
    names = codec.PARTS[meta["entropy"]]
    blob, ends = tensors[f"{KEY}::encoded"].numpy(), np.cumsum(meta["parts"])
    parts = {name: blob[end - size : end] for name, size, end in zip(names, meta["parts"], ends, strict=True)}
    edit(parts, meta, tensors)
    if f"{KEY}::encoded" in tensors:
        tensors[f"{KEY}::encoded"] = torch.from_numpy(np.concatenate([parts[n] for n in names]).astype(np.uint8))
        meta.setdefault("parts", [len(parts[n]) for n in names])
    metadata["quantized"] = json.dumps(quantized)
    save_file(tensors, str(dst), metadata=metadata)


def _resized(meta):
    meta.pop("parts")  # _rewrite writes the new sizes


@pytest.mark.parametrize(
    ("edit", "says"),
    [
        (lambda p, m, t: (p.update(codes=p["codes"][:10]), _resized(m)), "stream ends"),
        (lambda p, m, t: t.pop(f"{KEY}::encoded"), "lacks its part"),
        (lambda p, m, t: p.update(codes_lengths=np.ones(32, dtype=np.uint8)), "Kraft"),
        (lambda p, m, t: (p.update(codebook=p["codebook"][:32]), _resized(m)), "codebook takes 32 bytes"),
        (lambda p, m, t: m.update(parts=[1, 2, 3]), "parts=[1, 2, 3]"),
        (lambda p, m, t: m["parts"].__setitem__(2, m["parts"][2] + 1), "its parts take"),
        (lambda p, m, t: m.update(bits=12), "bits=12"),
        (lambda p, m, t: m.update(nonzero=10**9), "nonzero="),
        (lambda p, m, t: m.update(shape=[20, 30]), "positions"),
        (lambda p, m, t: m.update(entropy="lzw"), "entropy="),
    ],
)
def test_a_damaged_encoded_file_is_one_error_line(tmp_path, edit, says):
    model = pruned_fcl()
    quantized = KMeansQuantization(bits=5, finetune_epochs=0).apply(model, batches)
    export_model(model, FCL_CFG, tmp_path / "q.safetensors", quantized=quantized)
    _rewrite(tmp_path / "q.safetensors", tmp_path / "bad.safetensors", edit)
    with pytest.raises(SsmoeError) as err:
        load_model(tmp_path / "bad.safetensors")
    message = str(err.value)
    assert says in message and "\n" not in message and "bad.safetensors" in message


def test_a_quantised_ptsne_mixture_exports_and_loads_to_the_same_predictions(run_cli, tmp_path):
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from ssmoe_cli.models.registry import build

    with initialize_config_module("ssmoe_cli.conf", version_base="1.3"):
        cfg = compose("train", overrides=["model=ptsne_moe", "data=digits", "hydra.runtime.output_dir=/tmp"])
    config = OmegaConf.to_container(cfg.model, resolve=True)
    torch.manual_seed(0)
    model = build(config)
    x = torch.randn(256, 64)
    model.prepare(x, torch.Generator().manual_seed(0))
    for layer in masked_layers(model):
        layer.set_mask(layer.mask & (torch.rand(layer.weight.shape) >= 0.7))
    quantized = KMeansQuantization(bits=4, finetune_epochs=1).apply(model, lambda: batches(2))
    roles = {layer.role for name, layer in model.prunable_layers().items() if name in quantized.layers}
    assert {"hidden", "output", "route", "gate"} <= roles  # every inference layer shares its weights
    model.eval()
    export_model(model, config, tmp_path / "moe.safetensors", quantized=quantized)
    for kernels in (False, True):
        loaded = load_model(tmp_path / "moe.safetensors", sparse_kernels=kernels)
        for batch in (1, 3, 256):  # every dispatch path
            assert torch.allclose(loaded(x[:batch]).logits, model(x[:batch]).logits, atol=1e-5), (kernels, batch)
    info = run_cli("export", "--info", str(tmp_path / "moe.safetensors")).stdout
    assert "format ssmoe-sparse/2" in info
    for key in quantized.layers:
        assert f"{key}.weight" in info
    assert info.count("2^4 values, 5-bit indices, huffman coded") == len(quantized.layers)


# -- the training job --------------------------------------------------------------------------------


def test_a_quantised_run_logs_the_bytes_of_every_stage_and_tests_the_quantised_model(run_cli, tmp_path, mlflow_db):
    """`ssmoe train ... quantize=kmeans`: the byte metrics read back from MLflow shrink stage by stage,
    the run's file is the entropy-coded one, and that file scores exactly the run's test/acc on the raw
    test inputs (the test metrics are the quantised model's)."""
    from conftest import search_runs

    from ssmoe_cli.data.digits import Digits

    run_cli("train", "model=fcl", "data=digits", "trainer=debug", "trainer.max_epochs=2", "prune=magnitude",
            "prune.start=0", "prune.rounds=1", "prune.min_retrain=1", "prune.target_sparsity=0.9", "threads=1",
            "quantize=kmeans", "quantize.bits=5", "timing.repeats_b1=3", "timing.repeats_b256=3")  # fmt: skip
    (run,) = search_runs(tmp_path).to_dict("records")
    size = {key.split("/", 1)[1]: run[f"metrics.{key}"] for key in (
        "size/model_f32_bytes", "size/csr_bytes", "size/quantized_bytes", "size/entropy_coded_bytes",
        "size/sparse_bytes")}  # fmt: skip
    assert size["model_f32_bytes"] == 4 * run["metrics.params/total"] == 4 * 50_610  # 64-300-100-10
    assert size["model_f32_bytes"] > size["csr_bytes"] > 2.5 * size["quantized_bytes"]
    assert size["entropy_coded_bytes"] <= size["quantized_bytes"]
    (run_dir,) = tmp_path.glob("logs/train/runs/*")
    assert size["sparse_bytes"] == size["entropy_coded_bytes"] == (run_dir / "model.safetensors").stat().st_size
    assert run["params.quantize.bits"] == "5"
    assert 0 <= run["metrics.quantize/test_acc_before"] <= 1 and 0 <= run["metrics.quantize/test_acc_shared"] <= 1
    raw = Digits(in_features=64, num_classes=10).load()
    model = load_model(run_dir / "model.safetensors")
    with torch.no_grad():
        acc = float((model(torch.as_tensor(raw.x_test)).logits.argmax(1) == torch.as_tensor(raw.y_test)).float().mean())
    assert acc == pytest.approx(run["metrics.test/acc"], abs=1e-6)
    info = run_cli("export", "--info", str(run_dir / "model.safetensors")).stdout
    assert "format ssmoe-sparse/2" in info and "2^5 values, 5-bit indices, huffman coded" in info
    refused = run_cli("export", str(run_dir), check=False)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert refused.stderr.startswith("ssmoe: error:") and "use the file the run wrote" in refused.stderr


def test_a_stream_longer_than_its_symbols_can_fill_is_refused_before_decoding():
    lengths = huffman.code_lengths(np.array([5, 3, 1, 1]))
    with pytest.raises(huffman.HuffmanError, match="more than 10 symbols"):
        huffman.decode(bytes(1_000), lengths, 10)
    with pytest.raises(huffman.HuffmanError, match="not 10 symbols of 5 bits"):
        codec.unpack(np.zeros(8, dtype=np.uint8), 5, 10)
    assert codec.unpack(np.frombuffer(codec.pack(np.arange(10) % 32, 5), dtype=np.uint8), 5, 10).tolist() == list(
        range(10)
    )
