"""AuxOL: a frozen SAM, an auxiliary U-Net learnt online from a clinician's corrections while
images stream in, and an adaptive fusion of both outputs (spec vision.md §2; the original is
qianxihaoyue/AuxOL). README.md says what follows the released code and what does not."""
