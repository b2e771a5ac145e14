#!/bin/bash
# Measures the CPU use of ranks waiting for a SIGSTOPped peer (issue #10). Run from the repository root after
# dotnet build tests/Rannc.Runtime.Tests -c Release; needs mpiexec.hydra and bc.
W=tests/Rannc.Runtime.Tests/bin/Release/net10.0/linux-x64/Rannc.Mpi.Worker.dll
LOG=/tmp/watch_cpu.log
RANNC_TIMEOUT=40 timeout 120 mpiexec.hydra -n 4 -prepend-rank dotnet $W train-until-stopped > $LOG 2>&1 &
JOB=$!
until grep -q "rank 0 step 20" $LOG; do sleep 0.2; done
P3=$(grep -oP 'rank 3 pid \K\d+' $LOG); P0=$(grep -oP 'rank 0 pid \K\d+' $LOG); P1=$(grep -oP 'rank 1 pid \K\d+' $LOG)
kill -STOP $P3; T0=$(date +%s.%N); echo "stopped rank 3 (pid $P3)"
sleep 5
tick() { awk '{print $14+$15}' /proc/$1/stat; }
a0=$(tick $P0); a1=$(tick $P1); sleep 10; b0=$(tick $P0); b1=$(tick $P1)
HZ=$(getconf CLK_TCK)
echo "rank 0 CPU over 10 s while waiting: $(echo "scale=1; ($b0-$a0)*100/$HZ/10" | bc) %"
echo "rank 1 CPU over 10 s while waiting: $(echo "scale=1; ($b1-$a1)*100/$HZ/10" | bc) %"
wait $JOB; echo "job exit $? after $(echo "$(date +%s.%N)-$T0" | bc) s from the stop"
kill -KILL $P3 2>/dev/null
grep -i "watchdog\|aborts" $LOG | head -5
