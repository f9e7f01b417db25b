"""livepsf: real-time spatially-variant PSF estimation at the microscope."""
__version__ = "0.1.0"
