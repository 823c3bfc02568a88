"""MMMU-Pro standard (10 options) with ONE image per question: the images of a multi-image
question are merged into one picture by lmms-eval's own MMMU helper (as mmmu_val_group_img)."""

from lmms_eval.tasks.mmmu.utils_group_img import process_images
from lmms_eval.tasks.mmmu_pro.utils import mmmu_pro_doc_to_visual


def mmmu_pro_doc_to_visual_single(doc):
    visuals = mmmu_pro_doc_to_visual(doc)
    return [process_images(visuals)] if len(visuals) > 1 else visuals
