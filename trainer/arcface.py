"""The ArcFace head that trains an embedding network (training only; the export keeps the embedding).

ArcFace (Deng et al., CVPR 2019; seed 001's STgram-MFN) classifies an L2-normalised embedding ``e``
by its cosine to one learnt, L2-normalised centre ``W_c`` per class, adding an angular margin ``m``
to the true class's angle: the logit of the true class is ``s · cos(θ + m)``, every other class's
``s · cos θ``. Training thus pulls each class's embeddings within a cone around its centre and keeps
the cones apart, so that at test time a window that sounds like none of the training classes lies
far from every normal embedding, which a k-NN or Mahalanobis back end measures.

``scale`` 30 and ``margin`` 0.7 are STgram-MFN's values (seed 001, "Implementation"); not tuned here.

Keras is imported at module level: import this module only where a model is trained.
"""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import ops

__all__ = ["ArcFace", "DEFAULT_SCALE", "DEFAULT_MARGIN", "arcface_model"]

DEFAULT_SCALE = 30.0
DEFAULT_MARGIN = 0.7


@keras.saving.register_keras_serializable(package="edge_asd")
class ArcFace(keras.layers.Layer):
    """``[embedding (batch, d), label (batch,) or (batch, 1)]`` → ArcFace logits ``(batch, n_classes)``.

    Use with ``SparseCategoricalCrossentropy(from_logits=True)``. Where ``θ + m`` would pass π the
    margin would *raise* the cosine again; there the logit is ``cos θ − m · sin m`` instead
    (the reference implementation's rule), which keeps it monotonic in θ.
    """

    def __init__(self, n_classes: int, *, scale: float = DEFAULT_SCALE, margin: float = DEFAULT_MARGIN, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.n_classes, self.scale, self.margin = int(n_classes), float(scale), float(margin)

    def build(self, input_shape: Any) -> None:
        dim = int(input_shape[0][-1])
        self.centres = self.add_weight(name="centres", shape=(dim, self.n_classes), initializer="glorot_uniform")

    def call(self, inputs: Any) -> Any:
        embedding, label = inputs
        e = embedding / ops.maximum(ops.norm(embedding, axis=-1, keepdims=True), 1e-12)
        w = self.centres / ops.maximum(ops.norm(self.centres, axis=0, keepdims=True), 1e-12)
        cos = ops.clip(ops.matmul(e, w), -1.0 + 1e-7, 1.0 - 1e-7)
        sin = ops.sqrt(1.0 - cos * cos)
        cos_margin = cos * math.cos(self.margin) - sin * math.sin(self.margin)
        cos_margin = ops.where(cos > math.cos(math.pi - self.margin), cos_margin, cos - self.margin * math.sin(self.margin))
        onehot = ops.one_hot(ops.cast(ops.reshape(label, (-1,)), "int32"), self.n_classes)
        return self.scale * (onehot * cos_margin + (1.0 - onehot) * cos)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "n_classes": self.n_classes, "scale": self.scale, "margin": self.margin}


def arcface_model(backbone: Any, n_classes: int, *, scale: float = DEFAULT_SCALE, margin: float = DEFAULT_MARGIN) -> Any:
    """The training model ``[window, label] → ArcFace logits`` around an embedding ``backbone``
    (which shares its layers, so training it trains the backbone)."""
    label = keras.Input(shape=(), dtype="int32", name="label")
    logits = ArcFace(n_classes, scale=scale, margin=margin, name="arcface")([backbone.output, label])
    return keras.Model([backbone.input, label], logits, name=f"{backbone.name}_arcface")
