"""Which weights a Laplace approximation covers and which Hessian structure it uses.

The two choices are independent (as subset_of_weights x hessian_structure in
laplace-torch):

  subset_of_weights   "all" | "last_layer" | a list of layer paths
  hessian_structure   "full" | "diag" | "kron" | "function_space"

Parameters are grouped by layer (`parameter_groups`): one group holds the
trainable variables of one layer, and each group has its own prior precision.
The weights that are not covered stay at their trained values (their posterior
is a point mass).

`structure` names are a shorthand for a pair (STRUCTURES):

  "full"           all weights, full GGN
  "diag"           all weights, diagonal GGN
  "kron"           all weights, K-FAC
  "function_space" all weights, the function-space (GP) form of the full GGN
  "last_layer"     last layer, full GGN
  "last_layer_diag", "last_layer_kron", "last_layer_function_space"
                   last layer, with that Hessian structure
"""

import collections

SUBSETS = ("all", "last_layer")
HESSIAN_STRUCTURES = ("full", "diag", "kron", "function_space")
STRUCTURES = {
    "full": ("all", "full"),
    "diag": ("all", "diag"),
    "kron": ("all", "kron"),
    "function_space": ("all", "function_space"),
    "last_layer": ("last_layer", "full"),
    "last_layer_diag": ("last_layer", "diag"),
    "last_layer_kron": ("last_layer", "kron"),
    "last_layer_function_space": ("last_layer", "function_space"),
}


def parameter_groups(model):
    """OrderedDict layer path -> trainable variables of that layer, in model order."""
    groups = collections.OrderedDict()
    for v in model.trainable_variables:
        groups.setdefault(v.path.rsplit("/", 1)[0], []).append(v)
    return groups


def resolve(structure, subset_of_weights, hessian_structure):
    """(subset_of_weights, hessian_structure) from a structure shorthand or the pair.

    Args:
      structure: a key of STRUCTURES, or None to use the pair.
      subset_of_weights: "all", "last_layer", a list of layer paths, or None ("all").
      hessian_structure: one of HESSIAN_STRUCTURES, or None ("full").
    Raises:
      ValueError: an unknown name, or structure given together with the pair.
    """
    if structure is not None:
        if subset_of_weights is not None or hessian_structure is not None:
            raise ValueError(
                "Pass either structure (a shorthand) or subset_of_weights / hessian_structure, not both: "
                f"got structure={structure!r}, subset_of_weights={subset_of_weights!r}, "
                f"hessian_structure={hessian_structure!r}."
            )
        if structure not in STRUCTURES:
            raise ValueError(f"structure must be one of {tuple(STRUCTURES)}, got {structure!r}.")
        return STRUCTURES[structure]
    hessian_structure = "full" if hessian_structure is None else hessian_structure
    if hessian_structure not in HESSIAN_STRUCTURES:
        raise ValueError(f"hessian_structure must be one of {HESSIAN_STRUCTURES}, got {hessian_structure!r}.")
    subset_of_weights = "all" if subset_of_weights is None else subset_of_weights
    if isinstance(subset_of_weights, str):
        if subset_of_weights not in SUBSETS:
            raise ValueError(
                f"subset_of_weights must be one of {SUBSETS} or a list of layer paths, got {subset_of_weights!r}."
            )
        return subset_of_weights, hessian_structure
    try:
        return [str(name) for name in subset_of_weights], hessian_structure
    except TypeError:
        raise ValueError(
            f"subset_of_weights must be one of {SUBSETS} or a list of layer paths, got {subset_of_weights!r}."
        ) from None


def structure_name(subset_of_weights, hessian_structure):
    """The shorthand of a pair, or "subset_<hessian_structure>" for a list of layers."""
    for name, pair in STRUCTURES.items():
        if pair == (subset_of_weights, hessian_structure):
            return name
    return f"subset_{hessian_structure}"


def select_groups(groups, subset_of_weights):
    """The groups a subset covers, in model order (an OrderedDict like `groups`).

    Raises:
      ValueError: a list that is empty, repeats a layer or names a layer without
        trainable variables.
    """
    names = list(groups)
    if subset_of_weights == "all":
        chosen = names
    elif subset_of_weights == "last_layer":
        chosen = names[-1:]
    else:
        unknown = [name for name in subset_of_weights if name not in groups]
        if not subset_of_weights or unknown or len(set(subset_of_weights)) != len(subset_of_weights):
            raise ValueError(
                f"subset_of_weights must list distinct layer paths among {names}, got {subset_of_weights!r}."
            )
        chosen = [name for name in names if name in subset_of_weights]
    return collections.OrderedDict((name, groups[name]) for name in chosen)
