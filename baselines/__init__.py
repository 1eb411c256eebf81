"""The pixel-optimisation and selection baselines (DD, DC, DSA, DM, CAFE, IDC, KIP, MTT/TESLA, DATM, DQ).

This top-level folder is installed as ``gendistill.baselines`` (``pyproject.toml`` maps the package there): the
name ``baselines`` alone belongs to another widely installed package (OpenAI Baselines), and a second import name
would load every module twice. Import ``gendistill.baselines.dm``; a bare ``import baselines`` from a source tree is
refused below. Each method module registers itself when the method registry loads it through its entry point;
nothing is imported here.
"""

if __name__ == "baselines":  # imported by its folder name from a source tree, not as the installed package
    raise ImportError("import gendistill.baselines (this folder is installed under that name; `baselines` alone would "
                      "load every method twice)")
