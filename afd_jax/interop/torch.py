"""PyTorch checkpoints <-> afd_jax variables, in the layouts of the published zoos.

Every zoo model with a PyTorch original maps one-to-one onto that original's
``state_dict``:

* ``resnet8 .. resnet110``, ``resnet8x4``, ``resnet32x4``: RepDistiller/CRD ``resnet.py``
  (``conv1``, ``bn1``, ``layer{i}.{j}.{conv,bn}{1,2}``, ``layer{i}.{j}.downsample.{0,1}``,
  ``fc``);
* ``resnet18``, ``resnet34``, ``ResNet50``, ``resnet101`` (CIFAR stem): RepDistiller
  ``resnetv2.py`` = the AFD release's ``resnetv2.py`` (shortcut
  ``layer{i}.{j}.shortcut.{0,1}``, classifier ``linear``);
* ``resnet{18,34,50}_imagenet``: torchvision ``resnet.py`` (as the CIFAR ResNets, with
  ``conv3``/``bn3`` in Bottlenecks);
* ``wrn_*``: RepDistiller ``wrn.py`` = the AFD release's ``wrn.py``
  (``block{i}.layer.{j}.{bn1,conv1,bn2,conv2,convShortcut}``, final ``bn1``, ``fc``);
* ``vgg*``: RepDistiller ``vgg.py`` (``block{g}.{3k}`` conv, ``block{g}.{3k+1}`` BN,
  ``classifier``);
* ``MobileNetV2``: RepDistiller ``mobilenetv2.py`` (``conv1.{0,1}``,
  ``blocks.{row}.{k}.conv.{0,1,3,4,6,7}``, ``conv2.{0,1}``, ``classifier.0``);
* ``ShuffleV1``, ``ShuffleV2``: RepDistiller ``ShuffleNetv1.py``/``v2.py``
  (``conv1``, ``bn1``, ``layer{i}.{j}.*``, [``conv2``, ``bn2``], ``linear``).
* ``deeplabv3p_{resnet101,resnet18,mobilenetv2}``: the TaT segmentation release =
  jfzhang95/pytorch-deeplab-xception ``DeepLab`` (``backbone.conv1``,
  ``backbone.layer{i}.{j}.*`` or ``backbone.features.{i}.conv.{j}``, ``aspp.aspp{k}.
  {atrous_conv,bn}``, ``aspp.global_avg_pool.{1,2}``, ``aspp.{conv1,bn1}``,
  ``decoder.{conv1,bn1}``, ``decoder.last_conv.{0,1,4,5,8}``), its checkpoints
  ``{'state_dict': ...}``. The MobileNet backbone's tensors are listed twice there (also
  under ``backbone.{low,high}_level_features``): both are written, either is read.

`init_from_checkpoint` fills part of a model from a checkpoint of another layout: the
release's ImageNet backbones (torchvision ResNets, the MobileNetV2 file) into a DeepLab.

Tensors convert as: conv weight (O, I/g, kh, kw) <-> kernel (kh, kw, I/g, O); linear
weight (O, I) <-> kernel (I, O); BN ``weight``/``bias``/``running_mean``/``running_var``
<-> ``scale``/``bias`` (params) and ``mean``/``var`` (batch_stats). PyTorch's
``num_batches_tracked`` counters have no afd_jax variable: `import_teacher` keeps them in the
teacher run's ``meta`` and `export_run` writes them back, so an imported checkpoint exports
with its own counters; a run trained here exports its checkpoint's step (each train step
moves every BatchNorm once).

This is the only afd_jax module that imports torch, and only inside the functions that
read or write ``.pth`` files; the conversions themselves work on NumPy arrays.
"""
from __future__ import annotations

import os
import pickle
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from afd_jax import checkpointing, models
from afd_jax.interop import torch_layouts

# Where RepDistiller/CRD, mdistiller and the AFD release keep the state_dict in a .pth.
STATE_DICT_KEYS = ("model", "state_dict", "net")
_BN_COUNTER = "num_batches_tracked"
# A checkpoint of another architecture mismatches in hundreds of keys; the first few
# say what is wrong.
_MAX_PROBLEMS_SHOWN = 8


class TorchCheckpointError(ValueError):
  """A PyTorch checkpoint does not fit the afd_jax model it is converted into."""


def abstract_variables(model_name: str, num_classes: int, **model_kwargs: Any) -> dict:
  """``{'params', 'batch_stats'}`` of the model as ShapeDtypeStructs (nothing computed)."""
  model = models.get_model(model_name, num_classes, **model_kwargs)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False),
                          jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
  return {"params": shapes["params"], "batch_stats": shapes["batch_stats"]}


def variables_to_state_dict(model_name: str, variables: Mapping[str, Any],
                            num_batches_tracked: int | Mapping[str, int] = 0
                            ) -> dict[str, np.ndarray]:
  """afd_jax ``{'params', 'batch_stats'}`` -> the original's ``state_dict`` (NumPy).

  Args:
    model_name: the model the variables belong to.
    variables: its params and batch_stats (arrays of any kind).
    num_batches_tracked: written into every BN's ``num_batches_tracked`` (int64): one
      value for all, or ``{counter key: value}`` (`bn_counters` of a checkpoint; a BN it
      lacks gets 0).

  Returns:
    ``{torch key: float32 array}`` in PyTorch layout (conv weights (O, I/g, kh, kw),
    linear (O, I)); wrap with ``torch.from_numpy`` or use `save_state_dict`.
  """
  state = {}
  for collection, path, key, _, to_torch, _ in torch_layouts.layout(model_name, variables):
    value = variables[collection]
    for p in path:
      value = value[p]
    tensor = np.ascontiguousarray(to_torch(np.asarray(value, np.float32)))
    for k in (key, *torch_layouts.aliases(model_name, key)):
      state[k] = tensor
      if path[-1] == "mean":
        counter = k[:-len("running_mean")] + _BN_COUNTER
        value = (num_batches_tracked.get(counter, 0)
                 if isinstance(num_batches_tracked, Mapping) else num_batches_tracked)
        state[counter] = np.asarray(value, np.int64)
  return state


def bn_counters(state_dict: Mapping[str, Any]) -> dict[str, int]:
  """``{key: value}`` of a ``state_dict``'s BatchNorm ``num_batches_tracked`` entries."""
  return {k: int(np.asarray(v)) for k, v in state_dict.items() if k.endswith(_BN_COUNTER)}


def state_dict_to_variables(model_name: str, state_dict: Mapping[str, Any],
                            num_classes: int, **model_kwargs: Any) -> dict[str, Any]:
  """The original's ``state_dict`` -> afd_jax ``{'params', 'batch_stats'}``.

  Args:
    model_name: the afd_jax model to fill.
    state_dict: ``{key: array}`` (NumPy arrays or CPU tensors), without ``module.``.
    num_classes: the model's classifier outputs.
    **model_kwargs: passed to `models.get_model`.

  Returns:
    float32 jnp variables that ``models.get_model(model_name, num_classes).apply``
    accepts.

  Raises:
    TorchCheckpointError: one error listing every missing, unexpected and wrongly
      shaped key, each with both shapes and the model name.
  """
  abstract = abstract_variables(model_name, num_classes, **model_kwargs)
  layout = torch_layouts.layout(model_name, abstract)
  # A tensor the original lists twice (`torch_layouts.aliases`) may come under either key.
  names = {key: (key, *torch_layouts.aliases(model_name, key))
           for _, _, key, _, _, _ in layout}
  expected = {k for ks in names.values() for k in ks}
  bn_prefixes = {k[:-len("running_mean")] for _, p, key, _, _, _ in layout
                 if p[-1] == "mean" for k in names[key]}
  problems = []
  for _, _, key, shape, _, _ in layout:
    present = [k for k in names[key] if k in state_dict]
    if not present:
      problems.append(f"missing key {key!r} (model expects shape {shape})")
    for k in present:
      if tuple(np.shape(state_dict[k])) != shape:
        problems.append(f"key {k!r} has shape {tuple(np.shape(state_dict[k]))} in the "
                        f"checkpoint, model expects {shape}")
  for key in state_dict:
    counter = key.endswith(_BN_COUNTER) and key[:-len(_BN_COUNTER)] in bn_prefixes
    if key not in expected and not counter:
      problems.append(f"unexpected key {key!r} (shape {tuple(np.shape(state_dict[key]))})")
  if problems:
    shown = "; ".join(problems[:_MAX_PROBLEMS_SHOWN])
    more = len(problems) - _MAX_PROBLEMS_SHOWN
    raise TorchCheckpointError(
        f"PyTorch checkpoint does not fit model {model_name!r} (num_classes="
        f"{num_classes}): {shown}{f'; and {more} more' if more > 0 else ''}. Check "
        "--model and --num_classes against the checkpoint's architecture.")

  out = {"params": {}, "batch_stats": {}}
  for collection, path, key, _, _, to_jax in layout:
    node = out[collection]
    for p in path[:-1]:
      node = node.setdefault(p, {})
    value = next(state_dict[k] for k in names[key] if k in state_dict)
    node[path[-1]] = jnp.asarray(to_jax(_to_numpy(value)), jnp.float32)
  return out


def init_from_checkpoint(model_name: str, variables: Mapping[str, Any],
                         path_or_state_dict: str | Mapping[str, Any], num_classes: int
                         ) -> tuple[dict[str, Any], list[str]]:
  """Overwrites the tensors of ``variables`` that a PyTorch checkpoint holds.

  The checkpoint is read in the layout (`torch_layouts.checkpoint_keys`) that holds most
  of the model's tensors: the model's own original (a full jfzhang95 DeepLab state_dict;
  torchvision's ``resnet18`` for ``resnet18_imagenet``) or, for the DeepLabV3+ backbones,
  the ImageNet checkpoint the release starts from: torchvision's ``resnet18``/
  ``resnet101`` for ``deeplabv3p_resnet18``/``_resnet101``, the release's
  ``mobilenet_v2-6a65762b.pth`` or torchvision's ``mobilenet_v2`` for
  ``deeplabv3p_mobilenetv2``. As the release's ``_load_pretrained_model``, checkpoint
  entries the model has no place for (``fc.*``, ``classifier.*``) are ignored and the
  model's tensors the checkpoint lacks (ASPP, decoder) keep their values.

  Args:
    model_name: the model ``variables`` belong to.
    variables: its ``{'params', 'batch_stats'}`` (e.g. a fresh init).
    path_or_state_dict: a ``.pth`` file (bare state_dict or one under
      `STATE_DICT_KEYS`) or a ``{key: array or tensor}`` mapping.
    num_classes: the model's classifier outputs (for error messages).

  Returns:
    ``(new_variables, set_keys)``: float32 jnp ``{'params', 'batch_stats'}`` with the
    checkpoint's tensors in place, and the model's own ``state_dict`` keys of the tensors
    that were set (e.g. ``'backbone.layer1.0.conv1.weight'``), in layout order.

  Raises:
    TorchCheckpointError: a tensor has another shape in the checkpoint than in the model
      (names every such key), or the checkpoint fills nothing.
  """
  if isinstance(path_or_state_dict, str):
    state, source = load_state_dict(path_or_state_dict), path_or_state_dict
  else:
    state, source = extract_state_dict(path_or_state_dict), "state_dict"
  out = {c: _float32_copy(variables[c]) for c in ("params", "batch_stats")}
  layout = torch_layouts.layout(model_name, out)
  sources = []  # per leaf: {checkpoint layout: the key it holds the tensor under}
  for _, _, key, _, _, _ in layout:
    sources.append({name: next((k for k in keys if k in state), None) for name, keys
                    in torch_layouts.checkpoint_keys(model_name, key).items()})
  hits = {}
  for found in sources:
    for name, k in found.items():
      hits[name] = hits.get(name, 0) + (k is not None)
  best = max(hits, key=hits.get)  # ties: the model's own layout (listed first)
  if not hits[best]:
    sample = ", ".join(repr(k) for k in list(state)[:_MAX_PROBLEMS_SHOWN])
    raise TorchCheckpointError(
        f"{source} fills no tensor of model {model_name!r}: none of its keys ({sample}, "
        f"...) is a key of the model or of its ImageNet backbone checkpoint.")
  set_keys, problems = [], []
  for (collection, path, key, shape, _, to_jax), found in zip(layout, sources):
    k = found.get(best)
    if k is None:
      continue
    if tuple(np.shape(state[k])) != shape:
      problems.append(f"key {k!r} has shape {tuple(np.shape(state[k]))} in the "
                      f"checkpoint, model expects {shape} (as {key!r})")
      continue
    node = out[collection]
    for p in path[:-1]:
      node = node[p]
    node[path[-1]] = jnp.asarray(to_jax(_to_numpy(state[k])), jnp.float32)
    set_keys.append(key)
  if problems:
    shown = "; ".join(problems[:_MAX_PROBLEMS_SHOWN])
    more = len(problems) - _MAX_PROBLEMS_SHOWN
    raise TorchCheckpointError(
        f"{source} does not fit model {model_name!r} (num_classes={num_classes}) in "
        f"its {best!r} layout: {shown}{f'; and {more} more' if more > 0 else ''}.")
  return out, set_keys


def _float32_copy(tree: Mapping[str, Any]) -> dict[str, Any]:
  """Nested plain dicts of float32 jnp arrays (assignable, whatever mapping came in)."""
  return {k: _float32_copy(v) if isinstance(v, Mapping) else jnp.asarray(v, jnp.float32)
          for k, v in tree.items()}


def _to_numpy(value: Any) -> np.ndarray:
  if hasattr(value, "detach"):  # a torch tensor
    value = value.detach().cpu().float().numpy()
  return np.asarray(value, np.float32)


def extract_state_dict(checkpoint: Any, source: str = "checkpoint") -> dict[str, Any]:
  """The ``state_dict`` inside a loaded ``.pth`` object, without a ``module.`` prefix.

  Args:
    checkpoint: what ``torch.load`` returned: a bare state_dict, or a dict holding it
      under ``model``/``state_dict``/``net`` (RepDistiller/CRD, mdistiller, AFD release).
    source: for error messages.
  """
  if not isinstance(checkpoint, Mapping):
    raise TorchCheckpointError(f"{source} holds a {type(checkpoint).__name__}, not a "
                               "state_dict (a whole pickled nn.Module is not supported)")
  for name in STATE_DICT_KEYS:
    if isinstance(checkpoint.get(name), Mapping):
      checkpoint = checkpoint[name]
      break
  state = {}
  for key, value in checkpoint.items():
    if not hasattr(value, "shape"):
      raise TorchCheckpointError(
          f"{source}: entry {key!r} is a {type(value).__name__}, not a tensor; expected a "
          f"state_dict, bare or under one of {STATE_DICT_KEYS}")
    # nn.DataParallel / DistributedDataParallel checkpoints prefix every key.
    state[key[len("module."):] if key.startswith("module.") else key] = value
  return state


def load_state_dict(path: str, allow_pickle: bool = False) -> dict[str, np.ndarray]:
  """Reads a ``.pth`` file's state_dict as float32/int64 NumPy arrays.

  Args:
    path: the checkpoint file.
    allow_pickle: ``torch.load(weights_only=False)``: runs arbitrary pickled code, only
      for checkpoints from a trusted source that weights-only loading rejects.
  """
  import torch  # pylint: disable=g-import-not-at-top

  if not os.path.isfile(path):
    raise TorchCheckpointError(f"cannot read PyTorch checkpoint {path!r}: "
                               f"{'it is a directory' if os.path.isdir(path) else 'no such file'}")
  if os.path.getsize(path) == 0:
    raise TorchCheckpointError(f"cannot read PyTorch checkpoint {path!r}: the file is empty")
  try:
    checkpoint = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
  except pickle.UnpicklingError as e:
    guard = re.search(r"WeightsUnpickler error: ([^\n]*)", str(e))
    if allow_pickle or not guard:
      raise TorchCheckpointError(f"cannot read PyTorch checkpoint {path!r}: "
                                 f"{type(e).__name__}: {e}") from e
    # torch's weights-only guard: the file pickles more than tensors (an optimizer's
    # objects, argparse Namespaces, NumPy scalars).
    raise TorchCheckpointError(
        f"cannot read PyTorch checkpoint {path!r} with weights-only loading: "
        f"{guard.group(1).strip()} If the file is from a trusted source, pass "
        "allow_pickle (--allow_pickle): full unpickling can run code stored in it.") from e
  except Exception as e:
    first = str(e).strip().splitlines()[0] if str(e).strip() else "no further detail"
    raise TorchCheckpointError(
        f"cannot read PyTorch checkpoint {path!r}: {type(e).__name__}: {first} (is it a "
        "complete file written by torch.save?)") from e
  state = extract_state_dict(checkpoint, path)
  return {k: (v.detach().cpu().numpy() if v.dtype == torch.int64 else _to_numpy(v))
          for k, v in state.items()}


def save_state_dict(state_dict: Mapping[str, np.ndarray], path: str) -> None:
  """Writes a bare state_dict ``.pth`` (``model.load_state_dict(torch.load(path))``)."""
  import collections  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top

  torch.save(collections.OrderedDict(
      (k, torch.from_numpy(np.array(v))) for k, v in state_dict.items()), path)


def import_teacher(model_name: str, checkpoint: str, workdir: str, num_classes: int,
                   allow_pickle: bool = False) -> dict:
  """Converts `checkpoint` and writes it as the teacher run `workdir`.

  Returns:
    the imported ``{'params', 'batch_stats'}``.

  Raises:
    TorchCheckpointError: the checkpoint does not fit `model_name` (names every key).
    CheckpointError: `workdir` already holds checkpoints.
  """
  state = load_state_dict(checkpoint, allow_pickle=allow_pickle)
  variables = state_dict_to_variables(model_name, state, num_classes)
  meta = {"model": model_name, "num_classes": num_classes, "source": checkpoint}
  if bn_counters(state):
    meta[_BN_COUNTER] = bn_counters(state)
  checkpointing.write_teacher_checkpoint(workdir, variables, meta)
  return variables


def _run_bn_counters(workdir: str) -> int | dict[str, int]:
  """What `export_run` writes as ``num_batches_tracked``: an imported teacher's own
  counters (its ``meta``), else the step of the checkpoint exported (0 if unknown)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  step_dir = checkpointing._find_step_dir(workdir)  # pylint: disable=protected-access
  try:
    meta = ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(
        os.path.join(step_dir, "meta"))
  except Exception:  # no readable meta: nothing but the step to go on
    meta = {}
  if isinstance(meta, Mapping) and isinstance(meta.get(_BN_COUNTER), Mapping):
    return {k: int(v) for k, v in meta[_BN_COUNTER].items()}
  name = os.path.basename(os.path.normpath(step_dir))
  return int(name) if name.isdigit() else 0


def export_run(workdir: str, model_name: str, output: str, num_classes: int) -> dict:
  """Writes the run's student as a bare PyTorch state_dict; returns it (NumPy).

  Raises:
    CheckpointError: no checkpoint at `workdir`, or one that does not fit `model_name`.
  """
  abstract = abstract_variables(model_name, num_classes)
  variables = checkpointing.load_teacher_variables(workdir, abstract, model_name)
  state = variables_to_state_dict(model_name, variables, _run_bn_counters(workdir))
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  save_state_dict(state, output)
  return state
