from lmjupyter.compat.torchserve.util import (CLEANUP_REGEX, PredictionException, PT2Backend, check_valid_pt2_backend,
                                       get_yaml_config, list_classes_from_module, load_label_mapping, map_class_to_label)

__all__ = ["CLEANUP_REGEX", "PredictionException", "PT2Backend", "check_valid_pt2_backend", "get_yaml_config",
           "list_classes_from_module", "load_label_mapping", "map_class_to_label"]
