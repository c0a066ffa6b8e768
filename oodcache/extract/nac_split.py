"""The NAC authors' per-class split of a training set into sanity (their sub_train), main_train and
the build set (our ``fit``), shared by the image-list benchmarks and the digits demo."""

from __future__ import annotations

import numpy as np

#: NAC's build set: TrainSubset(valid_num=1000), int(1000/K) images per class
DEFAULT_FIT_SIZE = 1000


def nac_authors_split(members: list[int], seed: int, sanity: int) -> tuple[list[int], list[int]]:
    """One class's images (indices in list order) as the NAC authors split them:
    (sub_train, main_train in the order NAC's build set is drawn from).

    Stage 1 (their ``imglist_generator.py``): the class's list lines are shuffled in place with a
    fresh ``np.random.RandomState(seed)``; the first ``sanity`` form sub_train, the rest
    main_train. Stage 2 (``TrainSubset(valid_num=1000, rand_seed=seed)`` in their
    ``openood/postprocessors/nac/utils.py``): the class's positions in main_train are shuffled
    again with a fresh ``RandomState(seed)``, and the build set is the first int(1000/K) of them.
    A fresh generator per class makes each class's draw independent of the class order.
    """
    order = list(members)
    np.random.RandomState(seed).shuffle(order)
    s = min(sanity, len(order))
    sub, main = order[:s], order[s:]
    positions = list(range(len(main)))
    np.random.RandomState(seed).shuffle(positions)
    return sub, [main[q] for q in positions]
