"""Hounsfield units per tissue and contrast phase, each range with the published source it is read from.

A phantom patient draws one mean per tissue uniformly inside its phase's range, so patients differ the
way scans from different scanners, doses and injection timings do. `texture_hu` is the standard deviation
of the smooth within-organ variation (perfusion, fat, trabeculae), added before the scanner noise.
docs/PHANTOM.md prints this table; tests/test_phantom.py checks the rendered phantom against it.
"""
from __future__ import annotations

import dataclasses

PHASES = ("native", "arterial", "portal")
# IRCAD is mostly portal venous; native and arterial patients keep a model from learning one phase.
PHASE_PROBABILITIES = (0.15, 0.2, 0.65)

SOURCES = {
    "mitsiopoulos1998": "Mitsiopoulos N et al. Cadaver validation of skeletal muscle measurement by MRI and CT. "
                        "J Appl Physiol 1998;85:115-122 (muscle -29..+150 HU, adipose -190..-30 HU)",
    "goodpaster2000": "Goodpaster BH et al. Skeletal muscle attenuation determined by CT is associated with "
                      "skeletal muscle lipid content. J Appl Physiol 2000;89:104-110",
    "kodama2007": "Kodama Y et al. Comparison of CT methods for determining the fat content of the liver. "
                  "AJR 2007;188:1307-1312",
    "boyce2010": "Boyce CJ et al. Hepatic steatosis (fatty liver disease) in asymptomatic adults identified by "
                 "unenhanced low-dose CT. AJR 2010;194:623-628 (liver about 8-10 HU above spleen)",
    "bae2010": "Bae KT. Intravenous contrast medium administration and scan timing at CT. "
               "Radiology 2010;256:32-61 (aortic, portal and hepatic enhancement by phase)",
    "heiken1995": "Heiken JP et al. Dynamic incremental CT: effect of volume and concentration of contrast "
                  "material and patient weight on hepatic enhancement. Radiology 1995;195:353-357",
    "new1976": "New PF, Aronow S. Attenuation measurements of whole blood and blood fractions in computed "
               "tomography. Radiology 1976;121:635-640",
    "yuh1999": "Yuh BI, Cohan RH. Different phases of renal enhancement: role in detecting and characterizing "
               "renal masses during helical CT. AJR 1999;173:747-755",
    "lu1996": "Lu DS et al. Two-phase helical CT for pancreatic tumors: pancreatic versus hepatic phase "
              "enhancement of tumor, pancreas, and vascular structures. Radiology 1996;199:697-701",
    "pickhardt2013": "Pickhardt PJ et al. Opportunistic screening for osteoporosis using abdominal CT scans "
                     "obtained for other indications. Ann Intern Med 2013;158:588-595 (L1 trabecular HU)",
    "mortele2001": "Mortele KJ, Ros PR. Cystic focal liver lesions in the adult: differential CT and MR "
                   "imaging features. RadioGraphics 2001;21:895-910 (cysts and bile 0-20 HU)",
    "baron1996": "Baron RL et al. Hepatocellular carcinoma: evaluation with biphasic, contrast-enhanced, "
                 "helical CT. Radiology 1996;199:505-511 (arterial hyper-, portal iso/hypo-attenuation)",
    "macari2001": "Macari M, Balthazar EJ. CT of bowel wall thickening: significance and pitfalls of "
                  "interpretation. AJR 2001;176:1105-1116 (bowel and gastric wall enhancement)",
    "hounsfield": "Definition of the Hounsfield scale: air -1000 HU, water 0 HU (lung bases, gas, CSF)",
    "measured": "Measured here on the pydicom-data Pancreas-CT slice (explicit_VR-UN.dcm), not a tissue",
}


@dataclasses.dataclass(frozen=True)
class Tissue:
    name: str
    native: tuple[float, float]
    arterial: tuple[float, float]
    portal: tuple[float, float]
    texture_hu: float
    source: str

    def range(self, phase: str) -> tuple[float, float]:
        return getattr(self, phase)


def _t(name, native, arterial=None, portal=None, texture_hu=0.0, source="hounsfield") -> Tissue:
    return Tissue(name, native, arterial or native, portal or native, texture_hu, source)


# Label 0 is air outside the patient; the order here is the label number in PatientPhantom's label maps.
TABLE: tuple[Tissue, ...] = (
    _t("air", (-1005, -995)),
    _t("fat", (-115, -85), texture_hu=6, source="mitsiopoulos1998"),
    _t("visceral_fat", (-110, -70), texture_hu=10, source="mitsiopoulos1998"),
    _t("skin", (20, 50), texture_hu=4, source="mitsiopoulos1998"),
    _t("muscle", (38, 55), (45, 62), (50, 68), texture_hu=5, source="goodpaster2000"),
    _t("liver", (50, 66), (65, 90), (95, 130), texture_hu=8, source="kodama2007"),
    _t("spleen", (40, 55), (90, 150), (100, 130), texture_hu=10, source="boyce2010"),
    # Arterial blood spans routine arterial-phase CT (~220 HU) up to CT angiography timed for the left heart
    # and aorta (350-450 HU): a saturated blob in the liver window is blood, never liver.
    _t("blood_artery", (35, 50), (220, 450), (140, 200), texture_hu=3, source="bae2010"),
    _t("blood_vein", (35, 50), (70, 120), (140, 180), texture_hu=3, source="new1976"),
    _t("portal_vein", (35, 50), (110, 170), (150, 190), texture_hu=3, source="bae2010"),
    _t("hepatic_vein", (35, 50), (50, 80), (130, 170), texture_hu=3, source="heiken1995"),
    _t("myocardium", (38, 52), (90, 130), (90, 120), texture_hu=4, source="bae2010"),
    _t("kidney_cortex", (28, 40), (140, 200), (140, 190), texture_hu=6, source="yuh1999"),
    _t("kidney_medulla", (25, 38), (50, 90), (120, 170), texture_hu=6, source="yuh1999"),
    _t("pancreas", (38, 50), (100, 140), (80, 110), texture_hu=8, source="lu1996"),
    _t("bowel_wall", (30, 50), (60, 105), (75, 120), texture_hu=8, source="macari2001"),
    _t("bowel_content", (-30, 60), texture_hu=25, source="macari2001"),
    _t("fluid", (0, 18), texture_hu=2, source="mortele2001"),
    _t("gas", (-1000, -960), texture_hu=5),
    _t("lung", (-890, -820), texture_hu=20),
    _t("bone_cortical", (600, 1100), texture_hu=60, source="pickhardt2013"),
    _t("bone_trabecular", (130, 260), texture_hu=25, source="pickhardt2013"),
    _t("csf", (2, 15), texture_hu=2),
    _t("lesion_hypo", (25, 45), (40, 70), (45, 80), texture_hu=6, source="baron1996"),
    _t("lesion_hyper", (35, 50), (110, 170), (80, 115), texture_hu=8, source="baron1996"),
    _t("cyst", (0, 18), texture_hu=2, source="mortele2001"),
    _t("table", (150, 350), texture_hu=10, source="measured"),
    # Right heart and pulmonary arteries: in the arterial phase the contrast has already passed on to the
    # left heart and aorta, so the right heart is far less dense than the left; by the portal phase they match.
    _t("blood_right_heart", (35, 50), (100, 320), (130, 190), texture_hu=4, source="bae2010"),
    _t("urine", (0, 15), texture_hu=2, source="mortele2001"),
)
LABEL = {t.name: i for i, t in enumerate(TABLE)}
BONE = (LABEL["bone_cortical"], LABEL["bone_trabecular"])  # the labels of bone, cortex and marrow
