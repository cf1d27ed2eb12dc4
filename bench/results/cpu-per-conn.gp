set terminal pngcairo size 800,500 noenhanced
set output '/work/main/bench/results/cpu-per-conn.png'
set title 'Proxy CPU per short connection against load (open loop at fixed rates, then saturated)'
set xlabel 'connections per second'
set ylabel 'CPU µs per connection'
set grid
set key inside top right box opaque
set yrange [0:*]
plot '/work/main/bench/results/cpu-per-conn.dat' index 0 using 1:2 with linespoints lw 2 pt 7 ps 1.5 title 'stickyd', \
     '/work/main/bench/results/cpu-per-conn.dat' index 1 using 1:2 with linespoints lw 2 pt 7 ps 1.5 title 'haproxy', \
     '/work/main/bench/results/cpu-per-conn.dat' index 2 using 1:2 with linespoints lw 2 pt 7 ps 1.5 title 'nginx', \
     '/work/main/bench/results/cpu-per-conn.dat' index 3 using 1:2 with linespoints lw 2 pt 7 ps 1.5 title 'floor'
