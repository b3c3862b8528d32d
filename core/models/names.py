"""The architectures Dopamine knows, by name: without torch, so a model card can be checked (and a
package written, core.models.package) where no model is built."""

MODEL_NAMES = ("squeezenet1_1", "resnet18_gn", "small_cnn")
