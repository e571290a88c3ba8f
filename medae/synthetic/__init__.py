"""Synthetic brain MRI from the shipped MNI ICBM152 template: 'healthy subjects' and 'patients'.

Everything is made from a seed, TorchIO style: :func:`draw_params` draws every random value into a
JSON-serialisable dict, and :func:`regenerate` applies a dict deterministically, so a case is
rebuilt exactly from its recorded parameters (``make_subject(seed) == regenerate(params)``).

A subject is the skull-stripped 2 mm T1 template (80x96x80 voxels, RAS) with, in this order:

1. *lesions* (patients only), drawn in template space inside the white matter: irregular blobs
   (an ellipsoid plus up to three smaller lobes, the boundary roughened by smooth noise) with soft
   edges and a smooth texture, hyperintense (+30..60 % of the white-matter intensity) or
   hypointense (-45..60 %), of 300..8000 mm³ in template space (the warp below changes that by
   up to about +-40 %);
2. a *spatial transform*: a small global affine (rotation, scaling, translation) and a smooth
   random displacement (cubic-spline upsampled control points, a few mm), applied with linear
   interpolation (lesion labels with nearest neighbour);
3. *contrast*: a gamma curve on the white-matter-normalised intensities;
4. a slight *resolution change*: Gaussian blur matching an effective voxel size of 2..2.8 mm;
5. a smooth multiplicative *bias field* (exp of a 3rd-order polynomial);
6. *scanner units*: white matter at 300..1200;
7. *Rician noise* (1..3.5 % of white matter), then the brain mask (the images are skull-stripped,
   background 0).

Every case stays on the template's grid (same shape and affine), so healthy subjects can be
stacked for training without resampling.  :func:`write_dataset` writes a ready-to-use folder with
NIfTI images, brain masks, lesion labels, parameter files, manifests in medae's CSV format, and
one or more patients also as an axial DICOM series.

The template: MNI ICBM152 2009a nonlinear symmetric (Fonov et al. 2011), redistributed with its
copyright notice (``medae/data/NOTICE_MNI_ICBM152.txt``); ``scripts/make_template_data.py``
rebuilds the shipped files.

One concept per module: ``template`` (the shipped template), ``params`` (drawing every random
value), ``lesions``, ``transform`` and ``bias`` (the pieces), ``render`` (parameters to arrays),
``case`` (the result), ``dicom`` (a volume as a DICOM series; the tests' fixtures use it too) and
``dataset`` (writing a whole demo dataset).
"""

from medae.synthetic.case import SyntheticCase
from medae.synthetic.dataset import write_case_nifti, write_dataset
from medae.synthetic.dicom import write_case_dicom, write_dicom_series
from medae.synthetic.params import LESION_VOLUME_MM3, PARAMS_VERSION, draw_params
from medae.synthetic.render import make_subject, regenerate
from medae.synthetic.template import TEMPLATE_NAME, Template, load_template, template_notice

__all__ = ["LESION_VOLUME_MM3", "PARAMS_VERSION", "TEMPLATE_NAME", "SyntheticCase", "Template",
           "draw_params", "load_template", "make_subject", "regenerate", "template_notice",
           "write_case_dicom", "write_case_nifti", "write_dataset", "write_dicom_series"]
