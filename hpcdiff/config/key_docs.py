"""One-line meanings of job-file keys that their section's docstring does not describe.

Read by :mod:`hpcdiff.config.reference` (``docs/job-file.md``).  A key's meaning is, in
order: its field's ``metadata={"doc": ...}``, the sentences of its section's docstring that
name it, then this table.  A test requires every key to have one, so a new key without a
meaning is caught.
"""

from __future__ import annotations

KEY_DOCS: dict[str, str] = {
    # [experiment]
    "experiment.name": "Name of the experiment or run, shown in reports and outputs.",
    "experiment.data_path": "HDF5 path of the frame dataset, for files the geometry does not "
    "describe (default: the geometry's `data`, else the first of the usual CXI paths).",
    "experiment.pedestal": "HDF5 file of the per-pixel pedestal (dark) map in ADU, "
    "subtracted before common mode.",
    "experiment.gain": "HDF5 file of the per-pixel gain map (relative), applied with the pedestal.",
    # [simulate]
    "simulate.n_frames": "Frames to simulate.",
    "simulate.seed": "Random seed; the same seed gives the same experiment.",
    "simulate.detector": "`cspad` (1480 x 1552 Cheetah slab) or `small` (four 48 x 64 panels, "
    "for tests).",
    "simulate.geometry": "A CrystFEL .geom to simulate instead of the built-in detector, or an "
    "NXmx file (its NXtransformations; what `like` sets for an NXmx target without a .geom).",
    "simulate.diffuse_fraction": "Fraction of frames with diffuse scattering.",
    "simulate.frames_per_file": "Frames per CXI file.",
    "simulate.photon_energy_ev": "Photon energy, eV.",
    "simulate.detector_distance_m": "Sample-to-detector distance, m.",
    "simulate.cell_nm": "Unit cell lengths a, b, c, nm.",
    "simulate.cell_angles_deg": "Unit cell angles alpha, beta, gamma, degrees.",
    "simulate.compression": "HDF5 compression of the frames.",
    "simulate.processes": "Worker processes simulating frames.",
    "simulate.n_atoms": "Atoms in the simulated unit cell.",
    # [corrections]
    "corrections.common_mode": "Subtract each ASIC's common-mode offset.",
    "corrections.common_mode_threshold_photons": "Pixels below this many photons count as "
    "zero-photon pixels for the common-mode estimate.",
    "corrections.convert_to_photons": "Convert ADU to photons with the geometry's "
    "`adu_per_eV` (or `adu_per_photon`) and the photon energy.",
    # [background]
    "background.standard_guard": "Standard recipe: the residual is rescaled only where a "
    "frame's measured noise scale leaves [1/standard_guard, standard_guard] (>= 1).",
    "background.q_max_per_nm": "Standard recipe: half-width of the q-space CNN image, nm^-1 "
    "(no 2 pi); one image pixel is 2 q_max / image_size_px on every detector.",
    "background.q_smooth_per_nm": "Standard recipe: Gaussian smoothing sigma of the q-space "
    "image, nm^-1 (0 = off).",
    "background.q_cell": "Standard recipe: a q-space cell's value, `significance` "
    "(sum(w z) / sqrt(sum(w^2)), unit noise on every detector) or the area-weighted `mean`.",
    "background.method": "`radial` (isotropic per-|q| ring statistic), `local` (per-panel "
    "median/percentile filter) or `none`.",
    "background.n_radial_bins": "Number of |q| rings of the radial background.",
    "background.local_filter": "Statistic of the local filter: `median` or `percentile`.",
    "background.local_size_px": "Window of the local filter, pixels.",
    "background.local_percentile": 'Percentile of `local_filter = "percentile"`.',
    "background.mask_bragg": "Mask Bragg peaks before estimating the background.",
    "background.compression": "Compression of the normalised residual before the CNN image: "
    "`none`, `sqrt` or `log`.",
    "background.clip_sigma": "Normalised values are clipped to +- this many robust sigmas.",
    "background.image_size_px": "Side of the square CNN image, pixels (VGG16: 224).",
    # [features]
    "features.batch_size": "Images per VGG16 forward pass.",
    "features.device": "`auto` (CUDA when available), `cpu` or `cuda`.",
    "features.channels_last": "Run convolutions in NHWC memory layout (faster with cuDNN "
    "and oneDNN).",
    "features.compile": "Wrap VGG16 in torch.compile (slow first batch; pays off on long runs).",
    # [learn]
    "learn.n_components": "PCA components (the method: 50); fewer than the training frames.",
    "learn.n_train": "Training frames (the method: 500), stratified by class.",
    "learn.n_test": "Test frames (the method: 500); 0 trains on all and tests on none.",
    "learn.random_state": "Seed of the train/test split, PCA and logistic regression.",
    "learn.target": "`binary` (diffuse or not) or `classes` (the labels' amount-of-diffuse "
    "classes).",
    "learn.C": "Inverse L2 regularisation strength of the logistic regression.",
    "learn.pca_from": "`gather` (features rows to the root rank) or `statistics` (count, sum "
    "and Gram matrix reduced over ranks).",
    # [slurm]
    "slurm.job_name": "sbatch --job-name.",
    "slurm.partition": "sbatch --partition (better set in the site file).",
    "slurm.account": "sbatch --account (better set in the site file).",
    "slurm.qos": "sbatch --qos.",
    "slurm.nodes": "sbatch --nodes.",
    "slurm.tasks_per_node": "MPI ranks per node (sbatch --ntasks-per-node).",
    "slurm.gpus_per_task": "GPUs per rank (sbatch --gpus-per-task); 0 for CPU jobs.",
    "slurm.cpus_per_task": "CPU cores per rank (sbatch --cpus-per-task).",
    "slurm.mem": "Memory per node (sbatch --mem), e.g. `64G`.",
    "slurm.time_limit_min": "Time limit, minutes (sbatch --time).",
    "slurm.signal_ahead_s": "Send SIGUSR1 this many seconds before the time limit, so that "
    "the job saves its place (0: no signal).",
    "slurm.requeue": "Let SLURM requeue a preempted job (it resumes from its checkpoints).",
    "slurm.constraint": "sbatch --constraint (node features).",
    "slurm.mpi": "srun --mpi plugin (`pmi2`, `pmix`, ...).",
    "slurm.setup": "Shell lines run before the job (module loads, environments).",
    "slurm.extra_directives": "Extra `#SBATCH` options, e.g. `--exclusive`.",
    "slurm.array_throttle": "Most array tasks running at once in `hpcdiff reprocess`.",
    "slurm.site_file": "TOML file of site settings (a `[slurm]` table with these keys).",
    "slurm.log_dir": "Folder of the jobs' SLURM output files.",
    # [fourier]
    "fourier.max_hkl": 'Half-width of a cubic hkl grid (`extent = "hkl"`), Miller-index units; '
    "unset: each axis fitted to the cell and `q_max` (the largest |h|, |k|, |l| reachable).",
    "fourier.max_q_per_nm": "Resolution limit `q_max` of the grid, nm^-1 without 2 pi (half-width "
    'of the q grid for `extent = "q"`); unset: the largest |q| of any pixel over the run.',
    "fourier.truth_shells": "Resolution shells (equal reciprocal-space volume) of the truth "
    "correlation in `fourier_summary.json`.",
    "fourier.truth_isotropic_shell_width_per_nm": "Width of the thin |q| shells whose mean is "
    "subtracted from both maps for the isotropic-removed truth CC, nm^-1; unset: one voxel.",
    "fourier.mask_bragg_radius_hkl": "Voxels within this distance of integer hkl are left out "
    "of the merge (0: none).",
    "fourier.symmetrise": "Symmetrise the merged map: `none`, `friedel` or `laue` (mmm).",
    "fourier.min_overlap": "Frame pairs with fewer common voxels get no similarity.",
    "fourier.frames_per_task": "Frames per dask merge task.",
    "fourier.similarity_block": "Rows per dask task of the similarity matrix.",
    "fourier.image_downsample": "Downsampling of the images for image-space distances.",
    "fourier.n_diffusion_coords": "Diffusion-map coordinates kept.",
    "fourier.cluster.memory_per_worker": "Memory of each dask worker, e.g. `4GiB`.",
    "fourier.cluster.dashboard_address": "Address of the dask dashboard (`:0`: any free port).",
    "fourier.cluster.interface": "Network interface the dask workers use (e.g. `ib0`).",
    "fourier.cluster.local_directory": "Scratch folder of the dask workers (what they spill); "
    "a local cluster's workers use a private folder inside it, announced and removed at the "
    "end. Unset: dask's `temporary-directory`, else `$TMPDIR` or `/tmp` (not the job's "
    "output folder, often a shared file system).",
    "fourier.cluster.connect_timeout_s": "How long to wait for the scheduler and workers, s.",
    # [output]
    "output.dir": "Folder of the job's results; nothing there is overwritten without --force.",
    "output.model": "The model file `classify train` writes and `classify predict` reads "
    "(default: `dir/model.npz`).",
    "output.report": "Write an HTML report (`dir/report/index.html`).",
}
