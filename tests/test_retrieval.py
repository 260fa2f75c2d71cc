"""A model mixed with a memory of the training recipes (recipeset/retrieval.py): the mixture by hand, the memory
scoring only the given ingredients while completing, the weight tuned on validation."""

import math

import pytest
import torch

from recipeset.baselines import RecipeKNNBaseline
from recipeset.config import RunConfig
from recipeset.data.prepare import prepare_data
from recipeset.data.vocab import Vocabulary
from recipeset.errors import RecipesetError
from recipeset.models import DeepSets, DeepSetsConfig
from recipeset.models.base import pad_ids
from recipeset.retrieval import MemoryMixture, mix_log_probs, tune_memory_mixture

torch.set_num_threads(1)
NEG = float("-inf")


@pytest.fixture(scope="module")
def setup():
    data = prepare_data(RunConfig().override({"data.n_recipes": 400}, source="test").data)
    torch.manual_seed(0)
    model = DeepSets(DeepSetsConfig(d_model=16), data.vocab).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    memory = RecipeKNNBaseline(data.vocab, k=20).fit(data.train)
    return data, model, memory


def test_mix_by_hand():
    model = torch.log(torch.tensor([[0.5, 0.5, 0.0]]))
    memory = torch.log(torch.tensor([[0.0, 0.25, 0.75]]))
    got = mix_log_probs(model, memory, 0.4).exp()
    torch.testing.assert_close(got, torch.tensor([[0.3, 0.4, 0.3]]))  # 0.6·p_model + 0.4·p_memory
    torch.testing.assert_close(mix_log_probs(model, memory, 0.0), model)
    torch.testing.assert_close(mix_log_probs(model, memory, 1.0), memory)
    both_out = mix_log_probs(torch.tensor([[0.0, NEG]]), torch.tensor([[0.0, NEG]]), 0.5)
    assert both_out[0, 1] == NEG and math.isclose(float(both_out[0, 0]), 0.0, abs_tol=1e-6)
    with pytest.raises(RecipesetError, match=r"\[0, 1\]"):
        mix_log_probs(model, memory, 1.5)


def test_scores_are_the_mixture_of_the_two_distributions(setup):
    data, model, memory = setup
    tokens, mask = pad_ids([[8, 9, 12], [10]])
    mix = MemoryMixture(model, memory, weight=0.3)
    p_model = torch.softmax(model.completion_scores_ids(tokens, mask), 1)
    p_memory = torch.softmax(torch.as_tensor(memory.completion_scores_ids(tokens, mask)).float(), 1)
    expected = torch.log(0.7 * p_model + 0.3 * p_memory)
    got = mix.completion_scores_ids(tokens, mask)
    assert torch.equal(torch.isinf(got), torch.isinf(expected))
    finite = torch.isfinite(expected)
    torch.testing.assert_close(got[finite], expected[finite], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.exp().sum(1), torch.ones(2))


def test_completion_asks_the_memory_about_the_given_ingredients_only(setup):
    data, model, memory = setup
    tokens, mask = pad_ids([[8, 9], [10, 11, 12]])
    mix = MemoryMixture(model, memory, weight=0.0, complete_weight=1.0)  # completing: the memory alone, its one
    #                                                                       ranking of the given set
    mix.config.stop_threshold, mix.config.stop_size = 0.0, 3
    ranking = torch.as_tensor(memory.completion_scores_ids(tokens, mask)).float()
    assert mix.complete_ids(tokens, mask, max_new=10) == ranking.topk(3, dim=1).indices.tolist()
    ids, probs = mix.complete_ids(tokens, mask, max_new=10, return_probs=True)
    assert [len(p) for p in probs] == [3, 3] and all(0 < p <= 1 for row in probs for p in row)


def test_the_tuned_weight_is_the_best_on_validation(setup):
    data, model, memory = setup
    mix = MemoryMixture(model, memory)
    scores = tune_memory_mixture(mix, data.val_eval, weights=(0.0, 0.5, 1.0))
    assert set(scores["mrr"]) == set(scores["set_f1"]) == {0.0, 0.5, 1.0}
    assert scores["mrr"][mix.config.weight] == max(scores["mrr"].values())
    assert scores["set_f1"][mix.config.complete_weight] == max(scores["set_f1"].values())
    from recipeset.evaluation import evaluate_completion, evaluate_set_completion

    assert evaluate_completion(mix, data.val_eval)["mrr"] == pytest.approx(scores["mrr"][mix.config.weight])
    assert evaluate_set_completion(mix, data.val_eval)["micro_f1"] == pytest.approx(
        scores["set_f1"][mix.config.complete_weight])


def test_a_memory_of_another_vocabulary_is_refused(setup):
    _, model, _ = setup
    with pytest.raises(RecipesetError, match="another vocabulary"):
        MemoryMixture(model, RecipeKNNBaseline(Vocabulary(["tomato", "basil"], []), k=5))
    with pytest.raises(RecipesetError, match=r"\[0, 1\]"):
        MemoryMixture(model, setup[2], weight=-0.1)
