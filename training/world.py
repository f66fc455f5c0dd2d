"""The "list world": list operations (primitives), their wordings, and functions built from them.

Real SNI tasks are too few and too varied to tell whether a hypernetwork
generalises from instructions; here every task is a known function of a short
list, so held-out tasks can be built that differ from training in exactly one
controlled way (a new combination, a new parameter value, or a new wording),
and correctness of every reference output is checkable. This module is the
world itself; ``training.suite`` plans tasks in it and ``training.suite_files``
writes them.

Every primitive is about positions, equality or the order of numbers:
operations that need per-word spelling knowledge (uppercase, alphabetical
order, initial letters) or multi-token arithmetic (sum) cost a tiny model most
of its budget (see the model card, checkpoints/tiny/README.md) and are left out.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from training.data import FUNCTION_FIELD, FunctionStep, Param, Task

# --------------------------------------------------------------------------
# Items and their textual form

ITEM_SEPARATOR = ", "
EMPTY_LIST = "none"
YES, NO = "yes", "no"
MAX_NUMBER = 99

# Concrete nouns and simple adjectives, one lowercase word each. Articles,
# "yes", "no" and "none" are deliberately absent: the first are stripped by
# SNI answer normalisation and the others are reserved output words.
VOCABULARY: tuple[str, ...] = tuple(
    """
    apple acorn amber anchor ant arrow attic
    banana basket bean bell berry blue boat book bottle bread brick bridge brown bucket butter button
    cactus camel candle carrot castle chair cherry clock cloud coin cookie copper cotton crayon crown cup
    daisy dark desk diamond dolphin door dove dragon drum duck dusty
    eagle egg elbow emerald engine envelope
    feather fence fern flag flower forest fork fox fresh frog
    garden garlic gate ghost giant glass glove goat grape green guitar
    hammer harbor hat heavy helmet hill hollow honey horse house
    icy igloo iron island ivory
    jacket jar jelly jungle juicy
    kettle key kite kitten knife
    ladder lake lamp lantern leaf lemon lion lizard log lucky
    magnet mango maple marble meadow melon mirror mitten monkey moon mountain muddy
    napkin narrow needle nest net nickel noodle
    oak ocean olive onion orange otter oven owl
    paper parrot peach pear pebble pencil pepper piano pillow pine plum pocket pumpkin purple
    queen quiet quilt
    rabbit radio rainbow raven ribbon river robot rocket rose round ruby
    saddle salt sand shell shovel silver snail sock spoon star stone sugar sunny swan
    table teapot tent thumb tiger tiny tomato towel tower tractor train tree tulip turtle
    umbrella
    valley vase velvet village violet violin
    wagon wallet walnut water whale wheel wide window wolf wooden
    yacht yarn yellow yogurt young
    zebra zinc zipper
    """.split()
)

Kind = Literal["word", "number"]
WORDS: frozenset[Kind] = frozenset({"word"})
NUMBERS: frozenset[Kind] = frozenset({"number"})
ANY: frozenset[Kind] = frozenset({"word", "number"})

Result = list[str] | str


def format_list(items: Sequence[str]) -> str:
    return ITEM_SEPARATOR.join(items) if items else EMPTY_LIST


def parse_list(text: str) -> list[str]:
    return [] if text == EMPTY_LIST else text.split(ITEM_SEPARATOR)


def format_result(result: Result) -> str:
    return result if isinstance(result, str) else format_list(result)


# --------------------------------------------------------------------------
# Primitives


@dataclass(frozen=True)
class Primitive:
    """One list operation with its paraphrases and parameter space.

    Each primitive has at most one parameter (``param_name``), whose values are
    split into ``train_values`` and disjoint ``held_out_values`` up front so the
    unseen-parameter split cannot leak. The last template is never used in
    training: it is the unseen-paraphrase template. ``templates`` are whole
    sentences (template 0 is the canonical wording); ``clauses`` are the same
    operation as lowercase imperative phrases, for composition frames.
    """

    name: str
    domain: frozenset[Kind]
    output: Literal["list", "number", "yesno"]
    fn: Callable[[list[str], Param], Result]
    templates: tuple[str, ...]
    clauses: tuple[str, ...]
    param_name: str | None = None
    train_values: tuple[int | str, ...] = ()
    held_out_values: tuple[int | str, ...] = ()
    # Nudges a random input so the operation has something to do (e.g. plant X).
    enrich: Callable[[list[str], Param, random.Random], list[str]] | None = None

    @property
    def train_templates(self) -> range:
        return range(len(self.templates) - 1)

    @property
    def held_out_template(self) -> int:
        return len(self.templates) - 1

    def sample_param(self, rng: random.Random) -> Param:
        """A training value; held-out values are only ever placed deliberately."""
        return None if self.param_name is None else rng.choice(self.train_values)

    def apply(self, items: Sequence[str], param: Param) -> Result:
        if (param is None) != (self.param_name is None):
            raise ValueError(f"{self.name}: parameter {self.param_name!r} given as {param!r}")
        return self.fn(list(items), param)

    def describe(self, param: Param, template_index: int) -> str:
        return self.fill(self.templates[template_index], param)

    def fill(self, wording: str, param: Param) -> str:
        """A template or clause of this primitive with its parameter written in."""
        if self.param_name is None:
            return wording
        # "{items}" lets count templates read "the first 1 item", not "1 items".
        return wording.format(**{self.param_name: param, "items": "item" if param == 1 else "items"})


def _yes_no(flag: bool) -> str:
    return YES if flag else NO


def _max(items: list[str], _: Param) -> str:
    return str(max(map(int, items))) if items else EMPTY_LIST


def _min(items: list[str], _: Param) -> str:
    return str(min(map(int, items))) if items else EMPTY_LIST


def _is_ascending(items: list[str], _: Param) -> str:
    numbers = [int(i) for i in items]
    return _yes_no(all(a <= b for a, b in zip(numbers, numbers[1:])))


def _plant_duplicate(items: list[str], _: Param, rng: random.Random) -> list[str]:
    if len(items) >= 2 and rng.random() < 0.6:
        source, target = rng.sample(range(len(items)), 2)
        items[target] = items[source]
    return items


def _plant_word(items: list[str], word: Param, rng: random.Random) -> list[str]:
    if rng.random() < 0.5:
        items[rng.randrange(len(items))] = str(word)
    return items


def _maybe_sort(items: list[str], _: Param, rng: random.Random) -> list[str]:
    return sorted(items, key=int) if rng.random() < 0.5 else items


HELD_OUT_WORDS = ("tiger", "lemon", "violin", "kettle", "anchor", "pebble")

# Real lowercase words that no training input contains: the ``unseen_words`` split runs training
# functions on them, to show whether the model copies any word or only its vocabulary's.
UNSEEN_ITEM_WORDS: tuple[str, ...] = tuple(
    """
    fig laptop walrus penguin cabbage trumpet sofa puzzle lobster pirate jigsaw hammock
    kayak muffin pretzel scooter teacup waffle yodel zucchini badger cobweb dentist fossil
    gecko hedgehog iceberg jasmine koala lagoon mammoth nutmeg orchid pancake quartz radish
    sardine tadpole unicorn vulture wombat xylophone yeti blizzard cinnamon doorbell
    """.split()
)

_SYLLABLE_ONSETS = "b d f g k l m n p r s t v z".split()
_SYLLABLE_VOWELS = "a e i o u".split()
_RESERVED_WORDS = frozenset({YES, NO, EMPTY_LIST, "a", "an", "the"})


def novel_word(rng: random.Random) -> str:
    """A made-up lowercase word ("tobek", "zumila"): training inputs mix some in, so the model
    learns to copy whatever word it is given, in pieces, rather than only the words it knows.
    Never a vocabulary word, an unseen test word or a reserved output word."""
    while True:
        syllables = [rng.choice(_SYLLABLE_ONSETS) + rng.choice(_SYLLABLE_VOWELS) for _ in range(rng.randint(2, 3))]
        word = "".join(syllables) + (rng.choice(_SYLLABLE_ONSETS) if rng.random() < 0.5 else "")
        if word not in _VOCABULARY_SET and word not in _UNSEEN_SET and word not in _RESERVED_WORDS:
            return word


_VOCABULARY_SET = frozenset(VOCABULARY)
_UNSEEN_SET = frozenset(UNSEEN_ITEM_WORDS)

# Wordings. Template 0 is the canonical one; the last is held out (the
# unseen-paraphrase split) and never trained on. The rest are written as people
# type: imperatives, questions, "please", terse and lowercase forms. Antonym
# primitives (max/min, sort_asc/sort_desc, first_k/last_k) share most frames, and
# keep/drop both appear around "the first {k}", so the deciding word, not the
# frame, tells them apart.
# Clauses are the same operations as lowercase imperative phrases, for
# COMPOSITION_FRAMES.
PRIMITIVES: tuple[Primitive, ...] = (
    Primitive(
        "reverse",
        ANY,
        "list",
        lambda xs, _: xs[::-1],
        (
            "Reverse the order of the items in the list.",
            "Write the list backwards.",
            "Output the items of the list from last to first.",
            "Return the list in reverse order.",
            "Reverse the list.",
            "Please reverse the list.",
            "Can you reverse this list?",
            "Just give me the list in reverse order.",
            "What does the list look like backwards?",
            "Give me the items backwards.",
            "I want the items in reverse order.",
            "Tell me the list from the last item to the first.",
            "reverse the list please.",
            "Flip the order of the items.",
            "Could you flip the order of the list?",
            "Read the list from end to start.",
            "List the items backwards, please.",
            "Put the items in reverse order.",
            "What is the list in reverse?",
            "Show the list reversed.",
            "list in reverse?",
            "Invert the order of the items.",
            "write the items last to first.",
            "Flip the list so that the last item comes first.",
        ),
        clauses=(
            "reverse the order of the items in the list",
            "reverse the list",
            "flip the order of the items",
            "write the list backwards",
            "put the items in reverse order",
            "read the items from last to first",
            "invert the order of the list",
        ),
    ),
    Primitive(
        "sort_asc",
        NUMBERS,
        "list",
        lambda xs, _: sorted(xs, key=int),
        (
            "Sort the numbers from smallest to largest.",
            "Arrange the numbers in ascending order.",
            "Put the numbers in increasing order.",
            "Order the list so that no number is smaller than the one before it.",
            "Sort the list in ascending order.",
            "Please sort these numbers in ascending order.",
            "Can you sort the numbers from smallest to biggest?",
            "Sort ascending.",
            "sort the numbers ascending.",
            "Just give me the numbers sorted from low to high.",
            "I want the numbers in ascending order.",
            "What are the numbers in increasing order?",
            "Order the numbers with the smallest first.",
            "Put the smallest number first and the largest last.",
            "Rearrange the list so the numbers go up.",
            "Can you put these numbers in order from smallest to largest?",
            "Give me the list sorted in ascending order.",
            "Tell me the numbers in ascending order.",
            "Could you sort the list, smallest number first?",
            "numbers in increasing order, please.",
            "ascending order please.",
            "Sort the numbers so they increase from left to right.",
            "List the numbers from lowest to highest.",
        ),
        clauses=(
            "sort the numbers from smallest to largest",
            "sort the list in ascending order",
            "arrange the numbers in increasing order",
            "put the numbers in ascending order",
            "order the numbers from low to high",
            "sort the numbers with the smallest first",
            "sort ascending",
        ),
    ),
    Primitive(
        "sort_desc",
        NUMBERS,
        "list",
        lambda xs, _: sorted(xs, key=int, reverse=True),
        (
            "Sort the numbers from largest to smallest.",
            "Arrange the numbers in descending order.",
            "Put the numbers in decreasing order.",
            "Order the list so that no number is bigger than the one before it.",
            "Sort the list in descending order.",
            "Please sort these numbers in descending order.",
            "Can you sort the numbers from biggest to smallest?",
            "Sort descending.",
            "sort the numbers descending.",
            "Just give me the numbers sorted from high to low.",
            "I want the numbers in descending order.",
            "What are the numbers in decreasing order?",
            "Order the numbers with the largest first.",
            "Put the largest number first and the smallest last.",
            "Rearrange the list so the numbers go down.",
            "Can you put these numbers in order from largest to smallest?",
            "Give me the list sorted in descending order.",
            "Tell me the numbers in descending order.",
            "Could you sort the list, largest number first?",
            "numbers in decreasing order, please.",
            "descending order please.",
            "Sort the numbers so they decrease from left to right.",
            "List the numbers from highest to lowest.",
        ),
        clauses=(
            "sort the numbers from largest to smallest",
            "sort the list in descending order",
            "arrange the numbers in decreasing order",
            "put the numbers in descending order",
            "order the numbers from high to low",
            "sort the numbers with the largest first",
            "sort descending",
        ),
    ),
    Primitive(
        "first_k",
        ANY,
        "list",
        lambda xs, k: xs[:k],
        (
            "Keep only the first {k} {items} of the list.",
            "Take the first {k} {items}.",
            "Output the {k} {items} at the start of the list.",
            "Return the opening {k} {items} of the list.",
            "Give me the first {k} {items}.",
            "Please keep just the first {k} {items}.",
            "Can you show me the first {k} {items} of the list?",
            "Just the first {k} {items}, please.",
            "I only want the first {k} {items}.",
            "Could you list the first {k} {items}?",
            "Tell me the first {k} {items} in the list.",
            "first {k} {items}?",
            "keep the first {k} {items} only.",
            "Show the {k} {items} at the beginning of the list.",
            "Take {k} {items} from the front of the list.",
            "Cut the list down to its first {k} {items}.",
            "Return only the first {k} {items}, nothing else.",
            "Keep the first {k} {items} and remove the others.",
            "Only the first {k} {items} of the list, please.",
            "Could you trim the list to the first {k} {items}?",
            "Extract the first {k} {items}.",
            "From the start of the list, take {k} {items}.",
            "Print the first {k} {items}.",
            "Write down the first {k} {items} of the list and drop the rest.",
        ),
        clauses=(
            "keep only the first {k} {items} of the list",
            "take the first {k} {items}",
            "keep just the first {k} {items}",
            "cut the list down to its first {k} {items}",
            "take {k} {items} from the front of the list",
            "keep the {k} {items} at the start of the list",
            "give me the first {k} {items}",
        ),
        param_name="k",
        train_values=(1, 3),
        held_out_values=(2,),
    ),
    Primitive(
        "last_k",
        ANY,
        "list",
        lambda xs, k: xs[-k:],
        (
            "Keep only the last {k} {items} of the list.",
            "Take the final {k} {items}.",
            "Output the {k} {items} at the end of the list.",
            "Return the closing {k} {items} of the list.",
            "Give me the last {k} {items}.",
            "Please keep just the last {k} {items}.",
            "Can you show me the last {k} {items} of the list?",
            "Just the last {k} {items}, please.",
            "I only want the last {k} {items}.",
            "Could you list the last {k} {items}?",
            "Tell me the last {k} {items} in the list.",
            "last {k} {items}?",
            "keep the last {k} {items} only.",
            "Show the {k} {items} at the end of the list.",
            "Take {k} {items} from the back of the list.",
            "Cut the list down to its last {k} {items}.",
            "Return only the last {k} {items}, nothing else.",
            "Keep the last {k} {items} and remove the others.",
            "Only the last {k} {items} of the list, please.",
            "Could you trim the list to the last {k} {items}?",
            "Extract the last {k} {items}.",
            "From the end of the list, take {k} {items}.",
            "Print the last {k} {items}.",
            "Write down the last {k} {items} of the list and drop the rest.",
        ),
        clauses=(
            "keep only the last {k} {items} of the list",
            "take the last {k} {items}",
            "keep just the last {k} {items}",
            "cut the list down to its last {k} {items}",
            "take {k} {items} from the back of the list",
            "keep the {k} {items} at the end of the list",
            "give me the last {k} {items}",
        ),
        param_name="k",
        train_values=(1, 3),
        held_out_values=(2,),
    ),
    Primitive(
        "drop_first_k",
        ANY,
        "list",
        lambda xs, k: xs[k:],
        (
            "Remove the first {k} {items} from the list.",
            "Drop the first {k} {items} and keep the rest.",
            "Skip the first {k} {items} of the list.",
            "Delete the {k} {items} at the start of the list.",
            "Give me the list without the first {k} {items}.",
            "Please drop the first {k} {items}.",
            "Can you remove the first {k} {items} from the list?",
            "Just drop the first {k} {items}, please.",
            "I want the list minus its first {k} {items}.",
            "Return all but the first {k} {items}.",
            "Everything except the first {k} {items}, please.",
            "Tell me what is left after removing the first {k} {items}.",
            "drop the first {k} {items}.",
            "Leave out the first {k} {items}.",
            "Cut the first {k} {items} off the list.",
            "Throw away the first {k} {items} and return the rest.",
            "What remains after you remove the first {k} {items}?",
            "Could you skip the first {k} {items} and show me the rest?",
            "Discard the first {k} {items}.",
            "Ignore the first {k} {items} and give me the others.",
            "Keep everything except the first {k} {items}.",
            "without the first {k} {items}?",
            "Remove {k} {items} from the front of the list.",
            "Print the list without its first {k} {items}.",
            "Output everything after the first {k} {items}.",
        ),
        clauses=(
            "remove the first {k} {items} from the list",
            "drop the first {k} {items}",
            "skip the first {k} {items}",
            "cut the first {k} {items} off the list",
            "throw away the first {k} {items}",
            "keep everything except the first {k} {items}",
            "delete the {k} {items} at the start of the list",
        ),
        # Held-out k is interpolated (1 and 3 are seen), for every k primitive:
        # k = 4 on lists of at most 4 items would leave nothing to check.
        param_name="k",
        train_values=(1, 3),
        held_out_values=(2,),
    ),
    Primitive(
        "every_second",
        ANY,
        "list",
        lambda xs, _: xs[::2],
        (
            "Keep every second item, starting with the first one.",
            "Take the first, third, fifth and so on items of the list.",
            "Keep the items in odd positions.",
            "Remove every second item, starting from the second one.",
            "Give me every other item, starting with the first.",
            "Please keep every second item, beginning with the first one.",
            "Can you take every other item, starting from the first one?",
            "Just the items in odd positions, please.",
            "I want the 1st, 3rd, 5th and so on items.",
            "Which items are in odd positions?",
            "Tell me the items at positions one, three, five and so on.",
            "Skip every second item, starting with the second one.",
            "Drop the items in even positions.",
            "Delete the second, fourth, sixth and so on items.",
            "every other item, starting with the first?",
            "keep every second item starting from the first.",
            "Return the items at odd positions (first, third, and so on).",
            "Pick every alternate item, beginning with the first.",
            "Take the first item, skip one, take the next, and so on.",
            "Could you remove the items in even positions?",
            "Show the list with every second item removed, starting from the second.",
            "Print the items in odd-numbered positions.",
            "Keep the first item and then every other item after it.",
        ),
        clauses=(
            "keep every second item, starting with the first one",
            "take every other item, starting with the first",
            "keep the items in odd positions",
            "drop the items in even positions",
            "remove every second item, starting from the second one",
            "keep the first, third, fifth and so on items",
        ),
    ),
    Primitive(
        "dedupe",
        ANY,
        "list",
        lambda xs, _: list(dict.fromkeys(xs)),
        (
            "Remove duplicate items, keeping the first occurrence of each.",
            "Delete repeated items so that each item appears only once.",
            "Keep only the first copy of every item.",
            "Drop any item that already appeared earlier in the list.",
            "Remove the duplicates from the list.",
            "Please remove duplicate items from the list.",
            "Can you get rid of the duplicates, keeping the first of each?",
            "Just give me each item once, in the order they first appear.",
            "I want every item only once, in first-seen order.",
            "Which distinct items does the list have, in order of first appearance?",
            "Tell me the distinct items in the order they first appear.",
            "dedupe the list.",
            "Deduplicate the list, keeping first occurrences.",
            "Delete the repeats, keeping the first copy of each item.",
            "remove duplicates, keep the first one of each.",
            "List each distinct item once, in the order it first appears.",
            "Drop the duplicates.",
            "Could you drop repeated items and keep the first of each?",
            "Keep one copy of each item, the first one.",
            "Show the list with duplicates removed.",
            "Get rid of repeated items.",
            "Strip out duplicate items, leaving the first occurrence.",
            "Give me the unique items, keeping the first occurrence of each.",
            "Write the list without repeats, in the original order.",
        ),
        clauses=(
            "remove duplicate items, keeping the first occurrence of each",
            "remove the duplicates",
            "drop repeated items",
            "keep only the first copy of every item",
            "get rid of the repeats",
            "deduplicate the list",
            "keep each item only once",
        ),
        enrich=_plant_duplicate,
    ),
    Primitive(
        "count",
        ANY,
        "number",
        lambda xs, _: str(len(xs)),
        (
            "Count the items in the list.",
            "Give the number of items in the list.",
            "Report how many items the list has.",
            "Output the length of the list.",
            "How many items are in the list?",
            "How many items are there?",
            "Count the items.",
            "Please count the items in the list.",
            "Can you count how many items there are?",
            "Just give me the number of items.",
            "What's the length of the list?",
            "How long is the list?",
            "Tell me how many items the list has.",
            "Tally the items in the list.",
            "how many items?",
            "number of items in the list?",
            "I want to know how many items the list contains.",
            "What is the size of the list?",
            "Give me the item count.",
            "Could you tell me the number of items?",
            "count the list items please.",
            "Return the total number of items.",
            "How many things are in this list?",
            "Write how many entries there are in the list.",
        ),
        clauses=(
            "count the items",
            "count the items in the list",
            "give the number of items",
            "tell me how many items there are",
            "find the length of the list",
            "tally the items",
            "report how many items are left",
        ),
    ),
    Primitive(
        "max",
        NUMBERS,
        "number",
        _max,
        (
            "Find the largest number in the list.",
            "Output the maximum value.",
            "Return the biggest number.",
            "Give the highest number in the list.",
            "What's the largest number?",
            "What is the biggest number in the list?",
            "Which number is the largest?",
            "Which number is highest?",
            "Please find the largest number.",
            "Can you tell me the highest number?",
            "Just give me the maximum.",
            "I want the biggest number in the list.",
            "Tell me the largest value.",
            "biggest number?",
            "largest value in the list?",
            "what's the max?",
            "Give me the maximum number.",
            "Return the highest value in the list.",
            "Could you find me the largest number?",
            "Which is the highest number here?",
            "Find the max of these numbers.",
            "Output the largest of the numbers.",
            "What's the maximum value in this list?",
            "Write the greatest of the numbers.",
        ),
        clauses=(
            "find the largest number",
            "give me the biggest number",
            "return the highest number",
            "take the maximum",
            "tell me the largest value",
            "pick the biggest number",
            "output the maximum value",
        ),
    ),
    Primitive(
        "min",
        NUMBERS,
        "number",
        _min,
        (
            "Find the smallest number in the list.",
            "Output the minimum value.",
            "Return the lowest number.",
            "Give the least number in the list.",
            "What's the smallest number?",
            "What is the smallest number in the list?",
            "Which number is the smallest?",
            "Which number is lowest?",
            "Please find the smallest number.",
            "Can you tell me the lowest number?",
            "Just give me the minimum.",
            "I want the smallest number in the list.",
            "Tell me the smallest value.",
            "smallest number?",
            "smallest value in the list?",
            "what's the min?",
            "Give me the minimum number.",
            "Return the lowest value in the list.",
            "Could you find me the smallest number?",
            "Which is the lowest number here?",
            "Find the min of these numbers.",
            "Output the smallest of the numbers.",
            "What's the minimum value in this list?",
            "Pick out the tiniest of the numbers.",
        ),
        clauses=(
            "find the smallest number",
            "give me the smallest number",
            "return the lowest number",
            "take the minimum",
            "tell me the smallest value",
            "pick the smallest number",
            "output the minimum value",
        ),
    ),
    Primitive(
        "above",
        NUMBERS,
        "list",
        lambda xs, n: [x for x in xs if int(x) > int(n)],
        (
            "Keep only the numbers greater than {n}.",
            "Select the numbers above {n}.",
            "Remove every number that is {n} or less.",
            "Output the numbers that are bigger than {n}.",
            "Which numbers are greater than {n}?",
            "Give me the numbers above {n}.",
            "Please keep the numbers bigger than {n}.",
            "Can you show me the numbers over {n}?",
            "Just the numbers larger than {n}, please.",
            "I want only the numbers higher than {n}.",
            "Tell me which numbers are more than {n}.",
            "numbers above {n}?",
            "Drop every number that is not greater than {n}.",
            "Filter out the numbers that are {n} or below.",
            "Keep the numbers that are strictly greater than {n}.",
            "Return all numbers over {n}.",
            "What numbers in the list are larger than {n}?",
            "Remove the numbers less than or equal to {n}.",
            "Only keep values above {n}.",
            "Could you list the numbers that are bigger than {n}?",
            "keep numbers greater than {n}.",
            "Get rid of anything that is not above {n}.",
            "Select every value higher than {n}.",
            "Filter the list down to numbers exceeding {n}.",
        ),
        clauses=(
            "keep only the numbers greater than {n}",
            "keep the numbers above {n}",
            "drop every number that is {n} or less",
            "select the numbers bigger than {n}",
            "filter out the numbers that are not above {n}",
            "remove the numbers less than or equal to {n}",
            "keep the values over {n}",
        ),
        param_name="n",
        train_values=(25, 50, 75),
        held_out_values=(40, 60),
    ),
    Primitive(
        "contains",
        WORDS,
        "yesno",
        lambda xs, word: _yes_no(word in xs),
        (
            "Answer yes if the list contains {x}, otherwise answer no.",
            "Say yes if {x} is in the list and no if it is not.",
            "Check whether {x} appears in the list and answer yes or no.",
            "Tell with yes or no whether the word {x} is one of the items.",
            "Is {x} in the list?",
            "Does the list contain {x}?",
            "Is the word {x} one of the items?",
            "Does {x} appear in the list?",
            "Please check if {x} is in the list (yes or no).",
            "Can you tell me whether {x} is in the list?",
            "Just answer yes or no: is {x} in the list?",
            "I want to know if the list has {x} in it.",
            "Tell me yes or no: does the list include {x}?",
            "Is {x} among the items?",
            "does the list have {x}?",
            "Check if the list includes {x}.",
            "Find out whether {x} is in the list; answer yes or no.",
            "Say yes if the list includes {x}, otherwise say no.",
            "Could you check whether the word {x} is in the list?",
            "Is {x} one of the words in the list?",
            "Look for {x} in the list and say yes if it is there, no if not.",
            "yes or no, is {x} in the list?",
            "Reply yes when {x} occurs in the list, else reply no.",
        ),
        clauses=(
            "answer yes if the list contains {x}, otherwise no",
            "say yes if {x} is in the list and no if it is not",
            "check whether {x} is one of the items and answer yes or no",
            "tell me yes or no whether the list includes {x}",
            "say whether {x} appears in the list (yes or no)",
            "check if {x} is still in the list, answering yes or no",
        ),
        param_name="x",
        train_values=tuple(w for w in VOCABULARY if w not in HELD_OUT_WORDS),
        held_out_values=HELD_OUT_WORDS,
        enrich=_plant_word,
    ),
    Primitive(
        "is_sorted",
        NUMBERS,
        "yesno",
        _is_ascending,
        (
            "Answer yes if the numbers are in ascending order, otherwise answer no.",
            "Say yes if the list is sorted from smallest to largest and no if it is not.",
            "Check whether the numbers never decrease and answer yes or no.",
            "Tell with yes or no whether the list is already in increasing order.",
            "Is the list sorted in ascending order?",
            "Are the numbers in ascending order?",
            "Are these numbers sorted from smallest to largest?",
            "Is the list already in increasing order?",
            "Please check whether the list is sorted in ascending order (yes or no).",
            "Can you tell me if the numbers are in increasing order?",
            "Just answer yes or no: are the numbers sorted from smallest to largest?",
            "I want to know if the list is sorted ascending.",
            "Tell me yes or no: is the list in ascending order?",
            "sorted in ascending order?",
            "is the list sorted from low to high?",
            "Do the numbers go up (or stay the same) from left to right?",
            "Check if the numbers are in non-decreasing order.",
            "Does the list never go down from one number to the next?",
            "Are the numbers already sorted from smallest to biggest?",
            "Could you check whether the list is in ascending order?",
            "Say yes if the numbers are sorted in ascending order, otherwise say no.",
            "Is no number smaller than the number before it?",
            "Is this list in ascending order, yes or no?",
            "Reply yes when each number is at least the one before it, else reply no.",
        ),
        clauses=(
            "answer yes if the numbers are in ascending order, otherwise no",
            "say yes if the list is sorted from smallest to largest and no if it is not",
            "check whether the numbers are in increasing order and answer yes or no",
            "tell me yes or no whether the list is in ascending order",
            "say whether the numbers are sorted ascending (yes or no)",
            "check if the list is sorted from smallest to largest, answering yes or no",
        ),
        enrich=_maybe_sort,
    ),
)
PRIMITIVES_BY_NAME: dict[str, Primitive] = {p.name: p for p in PRIMITIVES}


def composable(first: Primitive, second: Primitive) -> bool:
    """Whether "first, then second" can run: a list handed on to a step that reads it.

    Whether the pair is worth learning depends on parameters too, so that is
    judged on sampled inputs (see ``_is_informative``).
    """
    return first.name != second.name and first.output == "list" and bool(first.domain & second.domain)


# --------------------------------------------------------------------------
# Task functions


@dataclass(frozen=True)
class Step:
    """One step of a task: a primitive, its parameter, and which of its wordings describes it."""

    primitive: str
    param: Param
    template: int

    @property
    def function(self) -> FunctionStep:
        """The step without its wording: what a task file declares (training.data.FunctionStep)."""
        return (self.primitive, self.param)


def steps_of(task: Task) -> tuple[Step, ...]:
    """The steps a task file declares (template 0: the wording is not part of the function).

    Stages that re-sample a training task's function (stage 0's world skills) read it here,
    from the task's ``tagi_function`` field, never from its name.
    """
    if task.function is None:
        raise ValueError(f"task {task.name!r} declares no list-world function ({FUNCTION_FIELD!r}): not a synthetic task")
    steps = []
    for name, param in task.function:
        primitive = PRIMITIVES_BY_NAME.get(name)
        if primitive is None:
            raise ValueError(f"task {task.name!r}: {name!r} names no list-world primitive")
        if (param is None) != (primitive.param_name is None):
            raise ValueError(f"task {task.name!r}: {name!r} given parameter {param!r}")
        steps.append(Step(name, param, 0))
    return tuple(steps)


def run_steps(steps: Sequence[Step], items: Sequence[str]) -> Result:
    result: Result = list(items)
    for step in steps:
        if isinstance(result, str):
            raise ValueError(f"step {step.primitive!r} needs a list but got {result!r}")
        result = PRIMITIVES_BY_NAME[step.primitive].apply(result, step.param)
    return result


# Two-step tasks phrased as people write them; each slot takes a clause and
# training_wordings capitalises the filled sentence's first letter.
COMPOSITION_FRAMES: tuple[str, ...] = (
    "{first}, then {second}.",
    "{first} and then {second}.",
    "First {first}; after that, {second}.",
    "{first}. Then {second}.",
    "Please {first} and after that {second}.",
    "Can you {first} and then {second}?",
    "{first}, and once that's done, {second}.",
    "First {first}, then {second}.",
    "{first}; next, {second}.",
    "I want you to {first} and then {second}.",
    "Could you {first}, then {second}?",
    "Step 1: {first}. Step 2: {second}.",
    "{first}. After that, {second}.",
)


def _lowercase_start(text: str) -> str:
    """The sentence as the continuation of another ("I" stays a capital)."""
    return text if text.startswith("I ") else text[0].lower() + text[1:]


def _capitalise(text: str) -> str:
    return text[0].upper() + text[1:]


def describe_steps(steps: Sequence[Step]) -> str:
    """The canonical wording of a function (a task's definition): its steps' templates joined by ", then ".

    A question's "?" goes the way of a statement's "." before ", then", so any
    pair of templates reads as one sentence.
    """
    parts = [PRIMITIVES_BY_NAME[s.primitive].describe(s.param, s.template) for s in steps]
    text = parts[0]
    for part in parts[1:]:
        text = f"{text.rstrip('.?')}, then {_lowercase_start(part)}"
    return text


def training_wordings(steps: Sequence[Step], rng: random.Random, limit: int) -> list[str]:
    """Distinct wordings of a training function, the canonical one (``describe_steps``) first.

    Why: the generator has to learn that the few words that differ between tasks
    (smallest/largest, first/last, keep/drop) decide the task whatever surrounds
    them, so it must see each function in many frames, not one sentence. A
    single step gets its training templates, two steps get fillings of
    COMPOSITION_FRAMES with a clause of each step; both in ``rng`` order after
    the canonical one. The held-out template is never used, so
    the unseen-paraphrase split stays unseen; a step worded with it is refused.
    """
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    if not 1 <= len(steps) <= 2:
        raise ValueError(f"training wordings exist for one or two steps, got {len(steps)}")
    primitives = [PRIMITIVES_BY_NAME[s.primitive] for s in steps]
    for step, primitive in zip(steps, primitives):
        if step.template == primitive.held_out_template:
            raise ValueError(f"{step.primitive}: template {step.template} is the held-out paraphrase, not a training wording")
    canonical = describe_steps(steps)
    if len(steps) == 1:
        (step,), (primitive,) = steps, primitives
        candidates = [primitive.describe(step.param, i) for i in primitive.train_templates]
    else:
        (first, second), (one, two) = steps, primitives
        candidates = [
            _capitalise(frame.format(first=one.fill(a, first.param), second=two.fill(b, second.param)))
            for frame in COMPOSITION_FRAMES
            for a in one.clauses
            for b in two.clauses
        ]
    rest = [c for c in dict.fromkeys(candidates) if c != canonical]
    rng.shuffle(rest)
    return [canonical, *rest][:limit]


def category_of(steps: Sequence[Step]) -> str:
    """Primitive name for single steps, "composition:a+b" for pairs.

    Parameters are left out so reports pool e.g. all first_k tasks together.
    """
    names = [s.primitive for s in steps]
    return names[0] if len(names) == 1 else "composition:" + "+".join(names)


def domain_of(steps: Sequence[Step]) -> frozenset[Kind]:
    """The item kinds every step of a function can read."""
    domain = ANY
    for step in steps:
        domain = domain & PRIMITIVES_BY_NAME[step.primitive].domain
    return domain


def random_input(
    rng: random.Random,
    steps: Sequence[Step],
    min_items: int,
    max_items: int,
    words: Sequence[str] = VOCABULARY,
    novel_share: float = 0.0,
    words_only: bool = False,
) -> list[str]:
    """A random list the function can read, nudged by each step so that it has something to do.
    Word items come from `words`, a `novel_share` of them made up (novel_word); `words_only`
    leaves numbers out where the function reads words."""
    domain = domain_of(steps)
    if words_only and "word" in domain:
        mode = "word"
    else:
        mode = rng.choice(("word", "number", "mixed")) if domain == ANY else next(iter(domain))
    items = []
    for _ in range(rng.randint(min_items, max_items)):
        use_word = mode == "word" or (mode == "mixed" and rng.random() < 0.5)
        if not use_word:
            items.append(str(rng.randint(0, MAX_NUMBER)))
        elif novel_share and rng.random() < novel_share:
            items.append(novel_word(rng))
        else:
            items.append(rng.choice(words))
    for step in steps:
        primitive = PRIMITIVES_BY_NAME[step.primitive]
        if primitive.enrich is not None:
            items = primitive.enrich(items, step.param, rng)
    return items
