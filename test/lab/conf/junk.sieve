# Global Sieve script of the smtp_exporter lab (sieve_before): a message
# carrying the header "X-Lab-Junk: yes" goes to the Junk folder, as a spam
# filter would file it. start.sh exports the header line as LAB_JUNK_HEADER.
require ["fileinto"];

if header :is "X-Lab-Junk" "yes" {
  fileinto "Junk";
  stop;
}
