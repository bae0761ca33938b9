# lfopt train on ML-100K with each optimizer on both backends (test RMSE must agree within 0.005).
# Usage: bash benchmarks/backend_accuracy_ml100k.sh [path/to/u.data] (needs lfopt[torch] installed)
DATA=${1:-../shared/data/ml-100k/u.data}; OUT=$(mktemp -d)
for opt in sgd adam adago als slf sslf; do
 for bk in numba torch; do
  lfopt train --data "$DATA" --optimizer $opt --rank 20 --epochs 25 --lambda 0.05 --valid-fraction 0.1 --backend $bk --quiet --output $OUT/$opt-$bk.json --overwrite > $OUT/$opt-$bk.txt 2>&1
  echo "$opt $bk $(head -2 $OUT/$opt-$bk.txt | tr '\n' ' ')"
 done
done
