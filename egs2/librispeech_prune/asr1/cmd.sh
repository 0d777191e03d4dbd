# How jobs run. "local" runs them on this machine (in parallel, JOB=1:N);
# "slurm" submits each job with srun (set slurm_opts, e.g. "-p gpu --gres=gpu:1").
cmd_backend="${cmd_backend:-local}"
slurm_opts="${slurm_opts:-}"
train_cmd="local/run_jobs.sh --backend ${cmd_backend} --slurm_opts '${slurm_opts}'"
decode_cmd="local/run_jobs.sh --backend ${cmd_backend} --slurm_opts '${slurm_opts}'"
