# How jobs run (read by local/run_jobs.sh from the environment):
#   cmd_backend=local   run them on this machine (in parallel, JOB=1:N);
#   cmd_backend=slurm   submit each job with srun; slurm_opts are srun options for every
#                       job (e.g. "-p gpu --time 2-00:00:00"). Training jobs also get
#                       --gres=gpu:NGPU and, with --num_nodes N, --nodes=N --ntasks-per-node=1.
export cmd_backend="${cmd_backend:-local}"
export slurm_opts="${slurm_opts:-}"
train_cmd="local/run_jobs.sh"
decode_cmd="local/run_jobs.sh"
