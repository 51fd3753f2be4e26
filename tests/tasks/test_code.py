"""What the code tasks share: prompt styles through text and chat templates, the stop sequences, slicing."""
import pytest

from r1jax.rollout import PromptRenderer
from r1jax.tasks import get_task
from r1jax.tasks.code import select_split

PROBLEM = {"task_id": "t/0", "entry_point": "double", "canonical_solution": "    return 2 * x\n",
           "code_prompt": 'def double(x: int) -> int:\n    """Twice x.\n    >>> double(2)\n    4\n    """\n',
           "test": "def check(candidate):\n    assert candidate(3) == 6\n    assert candidate(-1) == -2\n"}


class ChatTokenizer:
    """Renders a chat as "<role>content" turns."""

    chat_template = "its own"
    bos_id = 1

    def apply_chat_template(self, messages, add_generation_prompt=True):
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>" * add_generation_prompt


def test_instruct_and_complete_prompts_through_text_and_chat_templates():
    instruct, complete = get_task("humaneval"), get_task("humaneval", config="complete")
    asked = instruct.question(PROBLEM)
    assert asked.startswith("Complete the following Python function.")
    assert asked.endswith("```python\n" + PROBLEM["code_prompt"] + "```")
    assert PromptRenderer(None, "plain")(complete.question(PROBLEM)) == PROBLEM["code_prompt"].strip()
    r1_zero = PromptRenderer(None, "r1_zero")(asked)
    assert "User: Complete the following" in r1_zero and r1_zero.endswith('    """\n```. Assistant:')
    chat = PromptRenderer(ChatTokenizer(), "plain_chat")(asked)
    assert chat == f"<user>{asked}<assistant>"
    with pytest.raises(ValueError, match="no prompt style 'chatty'; use one of instruct, complete"):
        get_task("humaneval", config="chatty")


def test_the_instruction_is_an_option_that_must_place_the_prompt():
    asked = get_task("python_functions", instruction="Write it.\n{prompt}Only code.").question(PROBLEM)
    assert asked == "Write it.\n" + PROBLEM["code_prompt"] + "Only code."
    with pytest.raises(ValueError, match="instruction='Write it.'... must hold {prompt} once"):
        get_task("humaneval", instruction="Write it.")


def test_complete_style_cuts_at_the_first_top_level_line():
    complete, instruct = get_task("humaneval", config="complete"), get_task("humaneval")
    body = "\n    return 2 * x\n"
    rambling = body + "\n\ndef main():\n    print(double(2))\nif __name__ == '__main__':\n    main()"
    assert complete.completion(rambling) == body + "\n"  # cut before "\ndef"
    assert instruct.completion(rambling) == rambling  # an instruct answer is taken whole
    fenced = "```python\ndef double(x):\n    return 2 * x\n```\n# done"
    assert complete.completion(fenced) == fenced  # a fenced program is never cut
    assert complete.answer(rambling) == "return 2 * x"
    assert instruct.answer(fenced) == "def double(x):\n    return 2 * x"


@pytest.mark.parametrize("split, expected", [("test", list(range(10))), ("test[:3]", [0, 1, 2]),
                                             ("test[7:]", [7, 8, 9]), ("test[-2:]", [8, 9]),
                                             ("test[:20%]", [0, 1]), ("test[10%:30%]", [1, 2])])
def test_select_split_slices_as_tfds_does(split, expected):
    assert select_split(split, {"test": list(range(10))}) == expected


def test_select_split_names_what_is_wrong():
    with pytest.raises(ValueError, match=r"no split 'train'; the splits are \['test'\]"):
        select_split("train", {"test": []})
    with pytest.raises(ValueError, match="cannot read the split 'test\\[1\\]'"):
        select_split("test[1]", {"test": []})


def test_the_pipelines_prompt_field_does_not_clash_with_the_code_prompt():
    """Rejection-sampling records and the reward evaluator's `prompts=` keep the rendered prompt text under
    `prompt`; a function problem's code lives under `code_prompt`, so both survive and score alike."""
    from r1jax.data.rejection import filter_samples
    from r1jax.rewards import RewardEvaluator, get_reward, sandbox_capabilities

    if not sandbox_capabilities().isolated:
        pytest.skip("sandboxed runs need root")
    task = get_task("humaneval")
    rendered = PromptRenderer(None, "r1_zero")(task.question(PROBLEM))
    right = "<think>twice</think> <answer>```python\ndef double(x):\n    return x * 2\n```</answer>"
    wrong = "<think>once</think> <answer>```python\ndef double(x):\n    return x\n```</answer>"
    records, dropped = filter_samples([PROBLEM], [rendered], [(right, 20, True), (wrong, 20, True)], first_index=0,
                                      num_samples=2, correct_fn=get_reward(task.accuracy_reward), max_new_tokens=64)
    assert dropped == {"incorrect": 1} and len(records) == 1
    assert records[0]["prompt"] == rendered and records[0]["code_prompt"] == PROBLEM["code_prompt"]
    with RewardEvaluator({task.accuracy_reward: 1.0}, num_workers=0) as rewards:
        result = rewards.evaluate([right, wrong], [PROBLEM, PROBLEM], prompts=[rendered, rendered])
    assert list(result.total) == [1.0, 0.0]
